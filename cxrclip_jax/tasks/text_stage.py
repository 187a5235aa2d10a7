"""What the three LLM2VEC4CXR stages (mntp, simcse, supervised) share: the LLM directory and its
tokenizer, LoRA or full fine-tuning, the report rows, the text-task evaluator and the export.

A stage's `config.model_dir` is its input: the base LLM for the first stage, the previous stage's
merged export for the others (set by tasks/llm2vec4cxr.py), so each stage starts from dense
weights and, with LoRA, attaches a fresh adapter (llm2vec's merge-then-new-LoRA chaining).
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

from cxrclip_jax.eval import text_tasks as text_eval
from cxrclip_jax.eval.embedder import TextEmbedder
from cxrclip_jax.export import hf
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.llm_encoder import LlmConfig, check_token_ids
from cxrclip_jax.models.text_encoder import TextEncoder
from cxrclip_jax.tasks import clip_setup
from cxrclip_jax import distributed, sharding
from data_pipelines import assets, pipelines, text_tasks
from data_pipelines.tokenization import Llm2VecTokenizer


class TextStage:
  """The resolved inputs of one stage (`stage` is the config's block: config.mntp, ...)."""

  def __init__(self, config, workdir, mesh, stage):
    self.config, self.workdir, self.mesh, self.stage = config, pathlib.Path(workdir), mesh, stage
    self.model_dir = pathlib.Path(config.model_dir or assets.path("smollm2"))
    hf_config = hf.read_config(self.model_dir)
    n = config.num_layers
    self.num_layers = n if n and n < hf_config["num_hidden_layers"] else None
    self.finetune = stage.get("finetune") or config.finetune  # the stage's own, else the chain's
    if self.finetune not in ("lora", "full"):
      raise ValueError(f"finetune must be lora or full, got {self.finetune!r}")
    self.lora = lora_lib.LoraConfig(**config.lora.to_dict()) if self.finetune == "lora" else None
    overrides = {"num_hidden_layers": self.num_layers} if self.num_layers else {}
    self.llm_config = LlmConfig.from_hf(hf_config, is_causal=False, dtype=config.text.dtype,
                                        remat=config.text.remat, lora=self.lora, **overrides)
    self.tokenizer = Llm2VecTokenizer.from_model_dir(self.model_dir, max_length=stage.max_length,
                                                     pooling=config.text.pooling, wrapper=config.text.wrapper)
    self.data_dirs = clip_setup.data_dirs(config)
    self.pooling = config.text.pooling
    self.num_latents, self.latent_heads = hf.DEFAULT_NUM_LATENTS, hf.DEFAULT_LATENT_HEADS
    if self.pooling == "latent_attention":
      self.num_latents, self.latent_heads = hf.latent_attention_sizes(
          self.model_dir, config.text.num_latents, config.text.latent_heads)
    self._eval_sets = None

  def rows(self, split: str) -> list[dict]:
    return [r for d in self.data_dirs if pipelines.split_sizes(d).get(split) for r in pipelines.read_split(d, split)]

  def encoder(self, **config_changes) -> TextEncoder:
    """The bidirectional pooled encoder over this stage's LLM (LoRA branches included)."""
    c = dataclasses.replace(self.llm_config, **config_changes) if config_changes else self.llm_config
    return TextEncoder(c, pooling=self.pooling, num_latents=self.num_latents, latent_heads=self.latent_heads)

  def load_encoder(self, params, shardings):
    """Fresh encoder params with the directory's weights put in. Latent-attention pooling that the
    directory does not have yet (it is trained in `supervised`) keeps its fresh init."""
    tensors = hf.read_weights(self.model_dir)
    pooling = self.pooling if "latent_attn.latents" in tensors or self.pooling != "latent_attention" else "mean"
    _, loaded, _ = hf.load_text_encoder(self.model_dir, pooling=pooling, num_layers=self.num_layers,
                                        num_latents=self.num_latents, latent_heads=self.latent_heads)
    return sharding.place_loaded(params, shardings, loaded)

  def param_groups(self) -> tuple:
    if self.lora is None:
      return ()
    return ((r"/lora/", {}), (r"^latent_attn/", {}), (r".*", {"frozen": True}))

  def device_batch(self, local: dict) -> dict:
    for key, value in local.items():
      if key.endswith("input_ids"):
        check_token_ids(value, self.llm_config.vocab_size)
    return sharding.global_batch(local, self.mesh)

  # ---------------------------------------------------------------- evaluation and export
  def eval_sets(self, capped: bool = True) -> dict:
    """The paper's text tasks on the eval split (built once); `capped` to data.eval_max_queries."""
    if self._eval_sets is None:
      self._eval_sets = text_tasks.eval_sets(self.rows(self.config.data.eval_split), seed=self.config.seed)
    cap = self.config.data.eval_max_queries
    return text_eval.limit_queries(self._eval_sets, cap) if capped and cap else self._eval_sets

  def evaluate(self, encoder_params, encoder: TextEncoder | None = None) -> dict:
    encoder = encoder or self.encoder()
    embedder = TextEmbedder(encoder, encoder_params, dataclasses.replace(self.tokenizer,
                            max_length=self.config.text.max_length), self.mesh, batch_size=32,
                            rules=sharding.rules(self.config))
    return text_eval.evaluate_sets(lambda texts, instr: embedder.embed(texts, instr), self.eval_sets())

  def export(self, encoder_params, out_dir) -> None:
    """A plain HF directory (LoRA merged) with llm2vec_config.json: every process takes part in
    gathering the params, process 0 writes, and all leave once it is on disk."""
    params = jax.tree.map(lambda x: np.asarray(sharding.to_host(x)), encoder_params)
    if distributed.is_main():
      hf.save_text_encoder(out_dir, self.llm_config, params, tokenizer_dir=self.model_dir, pooling=self.pooling,
                           lora=self.lora, max_length=self.config.text.max_length, latent_heads=self.latent_heads,
                           bidirectional=True)
    distributed.barrier(f"export {out_dir}")
