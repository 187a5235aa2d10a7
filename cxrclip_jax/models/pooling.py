"""Pooling token states into one vector per text, driven by an explicit `embed_mask`.

`embed_mask` marks the tokens that are pooled (the text, not the instruction nor BOS); they are a
contiguous run of real tokens, so every mode below gives the same result for left and right
padding. Everything is vectorized: no per-example Python loops.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrclip_jax.models.layers import Dense, param_with_axes

POOLING_MODES = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token", "latent_attention")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x: (B, L, D), mask: (B, L) -> (B, D); all-zero masks give zeros, not NaN."""
  m = mask.astype(jnp.float32)[..., None]
  return (x.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def weighted_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """llm2vec's weighted mean: the pooled tokens weighted 1..n in order, normalized to sum 1."""
  m = mask.astype(jnp.float32)
  w = jnp.cumsum(m, axis=1) * m
  w = w / jnp.maximum(w.sum(1, keepdims=True), 1e-9)
  return (x.astype(jnp.float32) * w[..., None]).sum(1)


def last_token(x: jax.Array, mask: jax.Array) -> jax.Array:
  """State of the last real token (llm2vec takes position -1 under left padding)."""
  l = mask.shape[1]
  last = (l - 1) - jnp.argmax(mask[:, ::-1].astype(bool), axis=1)
  return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def bos_token(x: jax.Array, input_ids: jax.Array, bos_token_id: int) -> jax.Array:
  """State of the first BOS token in each row."""
  first = jnp.argmax(input_ids == bos_token_id, axis=1)
  return jnp.take_along_axis(x, first[:, None, None], axis=1)[:, 0].astype(jnp.float32)


class TorchMultiheadAttention(nn.Module):
  """torch `nn.MultiheadAttention` (batch_first, no masks) under its torch param names.

  `in_proj_weight` (3D, D) stays in torch layout; `out_proj` is a Dense (kernel = weight.T).
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, kv: jax.Array) -> jax.Array:
    """query: (B, L, D); kv: (M, D) shared by every row -> (B, L, D)."""
    d, n = query.shape[-1], self.num_heads
    h = d // n
    w = param_with_axes(self, "in_proj_weight", nn.initializers.xavier_uniform(), (3 * d, d), ("qkv", "embed"))
    b = param_with_axes(self, "in_proj_bias", nn.initializers.zeros, (3 * d,), ("qkv",))
    w, b = w.astype(self.dtype), b.astype(self.dtype)
    q = (query.astype(self.dtype) @ w[:d].T + b[:d]).reshape(*query.shape[:2], n, h)  # (B, L, n, h)
    kv = kv.astype(self.dtype)
    k = (kv @ w[d:2 * d].T + b[d:2 * d]).reshape(-1, n, h)  # (M, n, h)
    v = (kv @ w[2 * d:].T + b[2 * d:]).reshape(-1, n, h)
    scores = jnp.einsum("blnh,mnh->blnm", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(h)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    attended = jnp.einsum("blnm,mnh->blnh", probs, v).reshape(query.shape)
    return Dense(d, ("embed", "embed_out"), use_bias=True, dtype=self.dtype, name="out_proj")(attended)


class LatentAttention(nn.Module):
  """LLM2VEC4CXR's latent-attention pooling, per the authors' vendored llm2vec.

  Trainable `latents` (num_latents, D) are keys *and* values of a multi-head attention whose
  queries are the token states; then Linear -> exact GELU -> Linear; then the masked mean over the
  pooled tokens. Queries never see each other, so this is a per-token map and a masked mean.
  Param names follow the released keys: `latents`, `multihead_attn/*`, `mlp_0`, `mlp_2`.
  """
  num_latents: int = 512
  num_heads: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"latent attention: hidden size {d} is not divisible by {self.num_heads} heads")
    latents = param_with_axes(self, "latents", nn.initializers.normal(1.0), (self.num_latents, d),
                              ("latents", "embed"))
    out = TorchMultiheadAttention(self.num_heads, self.dtype, name="multihead_attn")(x, latents)
    out = Dense(d, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="mlp_0")(out)
    out = nn.gelu(out, approximate=False)
    out = Dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="mlp_2")(out)
    return masked_mean(out, mask)


def pool(mode: str, hidden: jax.Array, embed_mask: jax.Array, *, attention_mask: jax.Array | None = None,
         input_ids: jax.Array | None = None, bos_token_id: int | None = None) -> jax.Array:
  """Parameter-free pooling modes. hidden: (B, L, D) -> (B, D) float32."""
  if mode == "mean":
    return masked_mean(hidden, embed_mask)
  if mode == "weighted_mean":
    return weighted_mean(hidden, embed_mask)
  if mode in ("eos_token", "last_token"):
    return last_token(hidden, attention_mask if attention_mask is not None else embed_mask)
  if mode == "bos_token":
    if bos_token_id is None or input_ids is None:
      raise ValueError("bos_token pooling needs input_ids and a tokenizer with a BOS token")
    return bos_token(hidden, input_ids, bos_token_id)
  raise ValueError(f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}")
