"""MNTP, llm2vec's first stage: masked next-token prediction with bidirectional attention.

The training split's reports are concatenated into fixed-length chunks (no padding); 20 % of
non-special tokens are selected (80/10/10 mask/random/keep; Mistral: all masked), and the token
at i is predicted from the output at i - 1, the loss on selected tokens only (`losses.mntp_loss`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cxrclip_jax import losses, sharding
from cxrclip_jax.export import hf
from cxrclip_jax.models.llm_encoder import LlmForMNTP
from cxrclip_jax.tasks import text_stage
from cxrclip_jax.train.state import merge
from cxrclip_jax.train.task import Task, TrainingError
from data_pipelines import pipelines, text_batches


def build(config, workdir, mesh, train: bool = True) -> Task:
  s = config.mntp
  ts = text_stage.TextStage(config, workdir, mesh, s)
  model = LlmForMNTP(ts.llm_config)
  tok = ts.tokenizer.tokenizer
  texts = [r["report"] for r in ts.rows(config.data.train_split)] if train else []
  chunks = text_batches.mntp_chunks(texts, tok, s.max_length) if train else None
  if train and len(chunks) < s.batch_size:
    raise TrainingError(f"{len(chunks)} chunks of {s.max_length} tokens is less than one batch of {s.batch_size}")
  batches = text_batches.MntpBatches(
      chunks, s.batch_size, config.seed, mask_token_id=pipelines.mask_token_id(tok, s.mask_token_type),
      vocab_size=ts.llm_config.vocab_size, special_ids=tok.all_special_ids, mlm_probability=s.mlm_probability,
      all_mask=s.all_mask) if train else None

  def train_data(start_step: int):
    for step in range(start_step, config.train.steps or s.steps):
      yield batches.batch(step, jax.process_index(), jax.process_count())

  def loss_fn(params, frozen, batch, rng):
    _, logits = model.apply({"params": merge(params, frozen)}, batch["input_ids"], batch["attention_mask"],
                            deterministic=False, rngs={"dropout": rng})
    loss, count = losses.mntp_loss(logits, batch["labels"])
    labels = batch["labels"][:, 1:]
    hits = (jnp.argmax(logits[:, :-1], -1) == labels) & (labels != losses.IGNORE_INDEX)
    count = count.astype(jnp.float32)
    return loss, {"weight": count, "masked_accuracy": hits.sum() / jnp.maximum(count, 1.0)}

  def load_pretrained(params, shardings):
    _, loaded = hf.load_mntp(ts.model_dir, num_layers=ts.num_layers)
    return sharding.place_loaded(params, shardings, loaded)

  ids = jnp.zeros((2, 8), jnp.int32)
  encoder = ts.encoder()
  return Task(
      name="mntp", model=model, init_fn=lambda: model.init({"params": jax.random.key(config.seed)}, ids,
                                                           jnp.ones_like(ids)),
      loss_fn=loss_fn, total_steps=config.train.steps or s.steps, global_batch=s.batch_size,
      train_data=train_data, device_batch=ts.device_batch, load_pretrained=load_pretrained,
      param_groups=ts.param_groups(),
      # The encoder view of the MNTP model: the same `model` subtree, pooled (the LM head is unused).
      evaluate=lambda params, step: {"text_tasks": ts.evaluate({"model": params["model"]}, encoder)},
      format_metrics=lambda name, m: text_stage.text_eval.format_table({name: m}),
      export=lambda params, out: ts.export({"model": params["model"]}, out),
      describe=f"{ts.model_dir.name}, {ts.llm_config.num_hidden_layers} layers, {ts.finetune}"
               f"{'' if not train else f', {len(chunks)} chunks of {s.max_length} tokens'}")
