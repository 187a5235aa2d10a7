"""Decoder LLMs (Llama, Qwen2, Mistral) as text encoders, with HF parameter names.

One model for causal LMs and LLM2Vec bidirectional encoders: `is_causal` is a config field, not a
subclass. Params are fp32; `dtype` sets the compute dtype. The param tree mirrors HF's state dict
(`embed_tokens/weight`, `layers_{i}/self_attn/q_proj/kernel`, ..., `norm/weight`), so
`export/hf.py` is one explicit rename + transpose table.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.layers import (Dense, RMSNorm, apply_rope, constrain, dot_product_attention, matmul,
                                       param_with_axes, rope_inv_freq)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclasses.dataclass(frozen=True)
class LlmConfig:
  """HF config fields we use, plus run-time switches (is_causal, dtype, remat, lora)."""
  model_type: str = "llama"
  vocab_size: int = 32000
  hidden_size: int = 64
  intermediate_size: int = 128
  num_hidden_layers: int = 2
  num_attention_heads: int = 4
  num_key_value_heads: int = 2
  head_dim: int = 16
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted dict items (hashable)
  attention_bias: bool = False  # q/k/v/o biases (Llama option)
  qkv_bias: bool = False        # q/k/v biases only (Qwen2)
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  sliding_window: int | None = None
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_id: int | list[int] | None = None
  # Dropout on the attention probabilities in training mode (HF `attention_dropout`; llm2vec's
  # SimCSE sets 0.3). Evaluation (`deterministic=True`) never drops.
  attention_dropout: float = 0.0
  # Run-time switches, not part of the HF config.
  is_causal: bool = False
  dtype: str = "float32"
  remat: bool = False
  lora: lora_lib.LoraConfig | None = None
  attention_impl: str = "xla"   # xla | cudnn (layers.dot_product_attention); training-mode dropout stays eager

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "LlmConfig":
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}; Llama-family models use silu")
    # transformers 5 nests rope settings in `rope_parameters`; 4.x keeps `rope_theta` + `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
      scaling = None
    heads = hf["num_attention_heads"]
    sliding = hf.get("sliding_window") if (model_type == "mistral" or hf.get("use_sliding_window")) else None
    kw = dict(
        model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
        attention_bias=bool(hf.get("attention_bias", False)), qkv_bias=model_type == "qwen2",
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),  # HF's default for all three
        sliding_window=sliding, max_position_embeddings=hf.get("max_position_embeddings", 4096),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
        attention_dropout=float(hf.get("attention_dropout") or 0.0))
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """config.json fields, readable by transformers 4.44 (legacy rope keys) and 5.x alike."""
    arch = {"llama": "LlamaModel", "qwen2": "Qwen2Model", "mistral": "MistralModel"}[self.model_type]
    scaling = dict(self.rope_scaling) if self.rope_scaling else None
    hf = dict(
        architectures=[arch], model_type=self.model_type, vocab_size=self.vocab_size,
        hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
        num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim, hidden_act="silu",
        rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta, rope_scaling=scaling,
        rope_parameters={"rope_theta": self.rope_theta, **(scaling or {"rope_type": "default"})},
        tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings,
        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        attention_dropout=self.attention_dropout)
    if self.model_type == "llama":
      hf.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
    if self.model_type == "mistral":
      hf["sliding_window"] = self.sliding_window
    if self.model_type == "qwen2":
      hf.update(use_sliding_window=False, sliding_window=None)
    return hf

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def check_token_ids(ids, vocab_size: int) -> None:
  """Host-side guard before ids reach `Embed`: under jit, `jnp.take` fills an out-of-range row
  with NaN instead of failing, which would surface much later as a NaN loss or embedding."""
  ids = np.asarray(ids)
  if ids.size and (ids.max() >= vocab_size or ids.min() < 0):
    raise ValueError(f"token id {int(ids.max()) if ids.max() >= vocab_size else int(ids.min())} is outside the "
                     f"embedding table of {vocab_size} rows (largest id {int(ids.max())}, vocab_size {vocab_size}): "
                     "the tokenizer does not belong to this model")


class Embed(nn.Module):
  """Token embedding whose param is HF's `embed_tokens.weight` (vocab, hidden)."""
  vocab_size: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.weight = param_with_axes(self, "weight", nn.initializers.normal(0.02),
                                  (self.vocab_size, self.features), ("vocab", "embed"))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.weight, ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied LM head: logits = x @ weight.T."""
    return matmul(x, self.weight.astype(self.dtype).T)


class Attention(nn.Module):
  config: LlmConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic: bool = True):
    c = self.config
    n, k, h = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    dense = lambda f, axes, bias, name: Dense(f, axes, use_bias=bias, dtype=c.compute_dtype, lora=c.lora, name=name)
    qkv_bias = c.qkv_bias or c.attention_bias
    q = dense(n * h, ("embed", "heads"), qkv_bias, "q_proj")(x, deterministic)
    kk = dense(k * h, ("embed", "kv_heads"), qkv_bias, "k_proj")(x, deterministic)
    v = dense(k * h, ("embed", "kv_heads"), qkv_bias, "v_proj")(x, deterministic)
    b, l, _ = x.shape
    inv_freq = rope_inv_freq(h, c.rope_theta, dict(c.rope_scaling) if c.rope_scaling else None)
    q = apply_rope(q.reshape(b, l, n, h), positions, inv_freq)    # (B, L, N, H)
    kk = apply_rope(kk.reshape(b, l, k, h), positions, inv_freq)  # (B, L, K, H)
    v = v.reshape(b, l, k, h)
    if deterministic or c.attention_dropout == 0.0:
      # GQA handled inside (N a multiple of K); logits and softmax in fp32; may use a fused kernel.
      out = dot_product_attention(q, kk, v, mask, c.attention_impl)   # (B, L, N, H)
    else:
      out = self._dropout_attention(q, kk, v, mask, c.attention_dropout)
    out = constrain(out.reshape(b, l, n * h), ("act_batch", "act_len", "act_heads"))
    return dense(c.hidden_size, ("heads", "embed"), c.attention_bias, "o_proj")(out, deterministic)

  @nn.nowrap  # a helper of __call__: its Dropout belongs to __call__'s compact scope
  def _dropout_attention(self, q, kk, v, mask, rate: float):
    """HF eager attention in training mode: dropout(softmax(q k^T / sqrt(H))) v, probabilities cast
    to the value dtype before the dropout, as HF does. The fused path has no hook for dropout, so the
    probabilities are materialized here. Grouped like `jax.nn.dot_product_attention` (query head
    n = kv * G + g, HF's `repeat_kv` order), so K/V are never repeated."""
    b, l, n, h = q.shape
    k = kk.shape[2]
    qg = q.reshape(b, l, k, n // k, h)                                                   # (B, L, K, G, H)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, kk, preferred_element_type=jnp.float32) * (h ** -0.5)
    # jax's own large negative: a query with no visible key gets the same uniform row as the fast path.
    logits = jnp.where(mask[:, :, None], logits, -0.7 * jnp.finfo(jnp.float32).max)    # (B, K, G, L, L)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    probs = nn.Dropout(rate, name="attention_dropout")(probs, deterministic=False)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, l, n, h)                # (B, L, N, H)


class Mlp(nn.Module):
  config: LlmConfig

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.config
    dense = lambda f, axes, name: Dense(f, axes, use_bias=c.mlp_bias, dtype=c.compute_dtype, lora=c.lora, name=name)
    gate = dense(c.intermediate_size, ("embed", "mlp"), "gate_proj")(x, deterministic)
    up = dense(c.intermediate_size, ("embed", "mlp"), "up_proj")(x, deterministic)
    hidden = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return dense(c.hidden_size, ("mlp", "embed"), "down_proj")(hidden, deterministic)


class DecoderLayer(nn.Module):
  config: LlmConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic: bool = True):
    c = self.config
    norm = lambda name: RMSNorm(c.rms_norm_eps, c.compute_dtype, name=name)
    x = x + Attention(c, name="self_attn")(norm("input_layernorm")(x), positions, mask, deterministic)
    x = x + Mlp(c, name="mlp")(norm("post_attention_layernorm")(x), deterministic)
    return constrain(x, ("act_batch", "act_len", "act_embed"))


def attention_mask_4d(attention_mask: jax.Array, is_causal: bool, sliding_window: int | None = None) -> jax.Array:
  """(B, 1, L, L) bool: key is real (and, if causal, not in the future / outside the window)."""
  keys = attention_mask.astype(bool)[:, None, None, :]
  if not is_causal:
    return keys
  l = attention_mask.shape[1]
  i, j = jnp.arange(l)[:, None], jnp.arange(l)[None, :]
  allowed = j <= i
  if sliding_window is not None:
    allowed &= (i - j) < sliding_window
  return keys & allowed[None, None]


class LlmModel(nn.Module):
  """HF `LlamaModel` / `Qwen2Model` / `MistralModel`: ids -> last hidden state (B, L, D)."""
  config: LlmConfig

  def setup(self):
    c = self.config
    self.embed_tokens = Embed(c.vocab_size, c.hidden_size, c.compute_dtype)
    layer = nn.remat(DecoderLayer, static_argnums=(4,)) if c.remat else DecoderLayer
    self.layers = [layer(c) for _ in range(c.num_hidden_layers)]  # named layers_0, layers_1, ...
    self.norm = RMSNorm(c.rms_norm_eps, c.compute_dtype)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True) -> jax.Array:
    c = self.config
    # Positions 0..L-1 whatever the padding, as HF does; RoPE is relative, so padding side and
    # amount do not change the result.
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    mask = attention_mask_4d(attention_mask, c.is_causal, c.sliding_window)
    x = constrain(self.embed_tokens(input_ids), ("act_batch", "act_len", "act_embed"))
    for layer in self.layers:
      x = layer(x, positions, mask, deterministic)
    return self.norm(x)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Tied LM head (only meaningful when `tie_word_embeddings`)."""
    return self.embed_tokens.attend(hidden)


class LlmForMNTP(nn.Module):
  """HF `*ForCausalLM` layout (`model/...`, `lm_head`), used for masked next-token prediction."""
  config: LlmConfig

  def setup(self):
    c = self.config
    self.model = LlmModel(c)
    if not c.tie_word_embeddings:
      self.lm_head = Dense(c.vocab_size, ("embed", "vocab"), dtype=c.compute_dtype)

  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    """Returns (last hidden state (B, L, D), logits (B, L, V))."""
    hidden = self.model(input_ids, attention_mask, deterministic)
    logits = self.model.logits(hidden) if self.config.tie_word_embeddings else self.lm_head(hidden)
    return hidden, logits
