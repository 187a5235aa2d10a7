"""Hugging Face directories <-> text-encoder params, through one explicit key table.

Reads plain HF directories (safetensors only; `LlamaModel`, `LlamaForCausalLM`, `Qwen2Model`,
`MistralModel` keys, and the released LLM2VEC4CXR's `latent_attn.*`), writes directories that
`transformers.AutoModel.from_pretrained` loads with no missing or unexpected keys. Pickle weights
are never loaded and no remote code is ever run.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrclip_jax.export import keymap, safetensors_io
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.llm_encoder import LlmConfig, LlmForMNTP
from cxrclip_jax.models.text_encoder import TextEncoder

# HF LlamaModel / Qwen2Model / MistralModel key -> Flax path under the `model` subtree.
# Biases exist only where the config asks for them; rows for absent params are simply unused.
LLM_KEYS: tuple[keymap.Row, ...] = (
    ("embed_tokens.weight", "embed_tokens/weight", False),
    *[(f"layers.{{i}}.self_attn.{p}.{w}", f"layers_{{i}}/self_attn/{p}/{f}", w == "weight")
      for p in ("q_proj", "k_proj", "v_proj", "o_proj") for w, f in (("weight", "kernel"), ("bias", "bias"))],
    *[(f"layers.{{i}}.mlp.{p}.{w}", f"layers_{{i}}/mlp/{p}/{f}", w == "weight")
      for p in ("gate_proj", "up_proj", "down_proj") for w, f in (("weight", "kernel"), ("bias", "bias"))],
    ("layers.{i}.input_layernorm.weight", "layers_{i}/input_layernorm/weight", False),
    ("layers.{i}.post_attention_layernorm.weight", "layers_{i}/post_attention_layernorm/weight", False),
    ("norm.weight", "norm/weight", False),
)
# The released LLM2VEC4CXR latent-attention pooling (torch nn.MultiheadAttention + MLP).
LATENT_ATTN_KEYS: tuple[keymap.Row, ...] = (
    ("latent_attn.latents", "latent_attn/latents", False),
    ("latent_attn.multihead_attn.in_proj_weight", "latent_attn/multihead_attn/in_proj_weight", False),
    ("latent_attn.multihead_attn.in_proj_bias", "latent_attn/multihead_attn/in_proj_bias", False),
    ("latent_attn.multihead_attn.out_proj.weight", "latent_attn/multihead_attn/out_proj/kernel", True),
    ("latent_attn.multihead_attn.out_proj.bias", "latent_attn/multihead_attn/out_proj/bias", False),
    ("latent_attn.mlp.0.weight", "latent_attn/mlp_0/kernel", True),
    ("latent_attn.mlp.0.bias", "latent_attn/mlp_0/bias", False),
    ("latent_attn.mlp.2.weight", "latent_attn/mlp_2/kernel", True),
    ("latent_attn.mlp.2.bias", "latent_attn/mlp_2/bias", False),
)
LM_HEAD_KEYS: tuple[keymap.Row, ...] = (("lm_head.weight", "lm_head/kernel", True),)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")
POOLING_FILE = "pooling.safetensors"  # latent-attention weights, kept out of AutoModel's state dict
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _table(hf_prefix: str, with_latent: bool, with_lm_head: bool) -> tuple[keymap.Row, ...]:
  rows = tuple((hf_prefix + h, "model/" + f, t) for h, f, t in LLM_KEYS)
  return rows + (LATENT_ATTN_KEYS if with_latent else ()) + (LM_HEAD_KEYS if with_lm_head else ())


def read_config(model_dir: str | pathlib.Path) -> dict:
  model_dir = pathlib.Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"model directory {str(model_dir)!r} does not exist")
  path = model_dir / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{model_dir} has no config.json (not an HF model directory)")
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None


def weight_files(model_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """The safetensors files of an HF directory (single or sharded, plus our pooling side file)."""
  model_dir = pathlib.Path(model_dir)
  index = model_dir / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  elif (model_dir / "model.safetensors").is_file():
    files = ["model.safetensors"]
  else:
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
      raise ValueError(f"{model_dir} has only pickle weights ({', '.join(pickles)}); pickle is never loaded — "
                       "convert them to safetensors first")
    raise FileNotFoundError(f"{model_dir} has no model.safetensors")
  if (model_dir / POOLING_FILE).is_file():
    files.append(POOLING_FILE)
  for f in files:
    if not (model_dir / f).is_file():
      raise FileNotFoundError(f"{model_dir / f} is listed in the index but missing")
  return [model_dir / f for f in files]


def read_weights(model_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of an HF directory, memory-mapped."""
  tensors = {}
  for f in weight_files(model_dir):
    tensors.update(safetensors_io.read(f))
  return tensors


def abstract_shapes(module, *init_args) -> dict[str, tuple]:
  """Flat {path: shape} of a module's checkpoint params (LoRA branches excluded: they are not in
  HF checkpoints and start from their own init), without allocating them."""
  abstract = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *init_args))["params"])
  return {k: v.shape for k, v in keymap.flatten(abstract).items() if not lora_lib.is_lora_path(k)}


def _dummy_text_inputs():
  ids = jnp.zeros((1, 4), jnp.int32)
  return ids, jnp.ones_like(ids), jnp.ones_like(ids)


DEFAULT_NUM_LATENTS, DEFAULT_LATENT_HEADS = 512, 8
LLM2VEC_CONFIG = "llm2vec_config.json"  # llm2vec's own keys only: it passes them all to LLM2Vec()
ENCODER_CONFIG = "encoder_config.json"  # ours: attention direction, latent-attention heads


def latent_attention_sizes(model_dir, num_latents: int = 0, latent_heads: int = 0,
                           tensors: dict | None = None) -> tuple[int, int]:
  """(num_latents, heads) of latent-attention pooling: the configured values (0: unset) checked
  against what the directory holds — the latents' row count and encoder_config.json's
  `latent_heads` (head count is not visible in the weights) — else the released defaults."""
  model_dir = pathlib.Path(model_dir)
  tensors = read_weights(model_dir) if tensors is None else tensors
  found_latents = tensors["latent_attn.latents"].shape[0] if "latent_attn.latents" in tensors else 0
  side = model_dir / ENCODER_CONFIG
  found_heads = int(json.loads(side.read_text()).get("latent_heads", 0)) if side.is_file() else 0
  for what, configured, found in (("num_latents", num_latents, found_latents), ("latent_heads", latent_heads, found_heads)):
    if configured and found and configured != found:
      raise ValueError(f"latent attention: the config asks for {what}={configured} but {model_dir} holds {found}; "
                       f"set text.{what}={found} (or 0 to take the checkpoint's)")
  return (num_latents or found_latents or DEFAULT_NUM_LATENTS, latent_heads or found_heads or DEFAULT_LATENT_HEADS)


def load_text_encoder(model_dir, *, pooling: str = "mean", is_causal: bool = False, dtype: str = "float32",
                      num_latents: int = 0, latent_heads: int = 0, num_layers: int | None = None,
                      **config_overrides):
  """(TextEncoder module, numpy params, ignored keys) from an HF directory. Raises naming any bad key.

  num_layers: keep only the first N decoder layers (then the final norm); the checkpoint's deeper
    layers are reported as ignored. Unadapted LLMs often embed as well from mid depth, for less.
  """
  hf_config = read_config(model_dir)
  if num_layers is not None:
    if not 0 < num_layers <= hf_config["num_hidden_layers"]:
      raise ValueError(f"num_layers={num_layers} is not in [1, {hf_config['num_hidden_layers']}]")
    config_overrides["num_hidden_layers"] = num_layers
  config = LlmConfig.from_hf(hf_config, is_causal=is_causal, dtype=dtype, **config_overrides)
  tensors = read_weights(model_dir)
  latent = pooling == "latent_attention"
  if latent and "latent_attn.latents" not in tensors:
    raise keymap.KeyMismatchError(f"latent_attention pooling needs 'latent_attn.*' keys; {model_dir} has none")
  num_latents, latent_heads = latent_attention_sizes(model_dir, num_latents, latent_heads, tensors)
  module = TextEncoder(config, pooling=pooling, num_latents=num_latents, latent_heads=latent_heads)
  # LlamaForCausalLM checkpoints prefix the base model with "model."; an encoder ignores lm_head.
  prefix = "model." if any(k.startswith("model.") for k in tensors) else ""
  optional = [r"lm_head\.weight"] + ([] if latent else [re.escape(r[0]) for r in LATENT_ATTN_KEYS])
  optional += [re.escape(prefix) + rf"layers\.{i}\..*" for i in range(config.num_hidden_layers,
                                                                    hf_config["num_hidden_layers"])]
  params, ignored = keymap.to_flax(tensors, _table(prefix, latent, False), abstract_shapes(module, *_dummy_text_inputs()),
                                   optional=optional)
  return module, params, ignored


def load_mntp(model_dir, *, dtype: str = "float32", num_layers: int | None = None, **config_overrides):
  """(LlmForMNTP module, numpy params): base model plus LM head (tied heads reuse embed_tokens).
  num_layers: keep only the first N decoder layers, as in `load_text_encoder`."""
  hf_config = read_config(model_dir)
  if num_layers is not None:
    if not 0 < num_layers <= hf_config["num_hidden_layers"]:
      raise ValueError(f"num_layers={num_layers} is not in [1, {hf_config['num_hidden_layers']}]")
    config_overrides["num_hidden_layers"] = num_layers
  config = LlmConfig.from_hf(hf_config, is_causal=False, dtype=dtype, **config_overrides)
  tensors = read_weights(model_dir)
  module = LlmForMNTP(config)
  prefix = "model." if any(k.startswith("model.") for k in tensors) else ""
  ids = jnp.zeros((1, 4), jnp.int32)
  shapes = abstract_shapes(module, ids, jnp.ones_like(ids))
  optional = [r"lm_head\.weight"] if config.tie_word_embeddings else []
  optional += [re.escape(prefix) + rf"layers\.{i}\..*" for i in range(config.num_hidden_layers,
                                                                    hf_config["num_hidden_layers"])]
  # A base-model directory (LlamaModel, or an encoder exported by a previous stage) has no untied
  # LM head: like HF's *ForMaskedLM on such a directory, the head starts from its fresh init
  # (absent from the returned params), which the caller keeps.
  with_head = not config.tie_word_embeddings and "lm_head.weight" in tensors
  if not config.tie_word_embeddings and not with_head:
    shapes = {k: v for k, v in shapes.items() if not k.startswith("lm_head/")}
    print(f"note: {model_dir} has no lm_head.weight; the MNTP head starts from its init", flush=True)
  params, _ = keymap.to_flax(tensors, _table(prefix, False, with_head), shapes, optional=optional)
  return module, params


def _write_weights(out_dir: pathlib.Path, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> None:
  total = sum(a.nbytes for a in tensors.values())
  if total <= max_shard_bytes:
    safetensors_io.write(out_dir / "model.safetensors", tensors, {"format": "pt"})
    return
  shards, current, size = [], {}, 0
  for k in sorted(tensors):
    if current and size + tensors[k].nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[k] = tensors[k]
    size += tensors[k].nbytes
  shards.append(current)
  weight_map = {}
  for n, shard in enumerate(shards, 1):
    name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
    safetensors_io.write(out_dir / name, shard, {"format": "pt"})
    weight_map.update({k: name for k in shard})
  (out_dir / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def save_text_encoder(out_dir, config: LlmConfig, params, *, tokenizer_dir=None, pooling: str = "mean",
                      lora: lora_lib.LoraConfig | None = None, max_length: int = 512,
                      latent_heads: int = DEFAULT_LATENT_HEADS, bidirectional: bool = True,
                      max_shard_bytes: int = 4 << 30) -> pathlib.Path:
  """Writes an HF directory: base-model keys in model.safetensors (params' dtype), LoRA merged,
  latent-attention weights (if any) in pooling.safetensors, tokenizer files copied over."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  params = jax.device_get(params)
  if lora is not None:
    params = lora_lib.merge(params, lora)
  latent = "latent_attn" in params
  tensors = keymap.to_hf(params, _table("", latent, False))
  pooled = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("latent_attn.")]}
  _write_weights(out_dir, tensors, max_shard_bytes)
  if pooled:
    safetensors_io.write(out_dir / POOLING_FILE, pooled)
  dtype = str(np.asarray(tensors["embed_tokens.weight"]).dtype)
  hf = config.to_hf()
  hf.update(torch_dtype=dtype, dtype=dtype)
  (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  sidecar = {"pooling_mode": pooling, "max_length": max_length, "doc_max_length": 400, "skip_instruction": True}
  encoder = {"bidirectional": bidirectional, "pooling_mode": pooling}
  if latent:  # the head count is not recoverable from the weights
    encoder["latent_heads"] = latent_heads
  (out_dir / ENCODER_CONFIG).write_text(json.dumps(encoder, indent=2) + "\n")
  (out_dir / LLM2VEC_CONFIG).write_text(json.dumps(sidecar, indent=2) + "\n")
  if tokenizer_dir is not None:
    for name in TOKENIZER_FILES:
      if (pathlib.Path(tokenizer_dir) / name).is_file():
        shutil.copyfile(pathlib.Path(tokenizer_dir) / name, out_dir / name)
  return out_dir
