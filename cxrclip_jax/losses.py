"""Losses as pure functions on global arrays (jit/sharding-agnostic; no collectives inside).

Under `jit` with sharded inputs, the arrays here are *global*: an in-batch contrastive loss over
(B, D) features already sees every example on every device, so "gathering across devices" is
XLA's job, not ours.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                  ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
  """Mean token cross-entropy over labels != ignore_index. logits (..., V) -> (loss, count)."""
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
  count = valid.sum()
  return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1), count


def mntp_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Masked next-token prediction (llm2vec): the token masked at i is predicted from position i-1.

  logits: (B, L, V); labels: (B, L) original ids at masked positions, IGNORE_INDEX elsewhere.
  """
  return cross_entropy(logits[:, :-1], labels[:, 1:])


def positives_from_ids(*ids: jax.Array) -> jax.Array:
  """(B, B) bool: i and j are positives when they share any of the given ids (B,) — e.g. the
  same report text or the same study — so duplicates are not pushed apart as false negatives."""
  pos = jnp.eye(ids[0].shape[0], dtype=bool)
  for x in ids:
    pos = pos | (x[:, None] == x[None, :])
  return pos


def _soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return -(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)).sum(-1).mean()


def infonce(logits: jax.Array, positives: jax.Array | None = None, label_smoothing: float = 0.0) -> jax.Array:
  """Symmetric CLIP InfoNCE over image->text logits (B, B).

  positives: optional (B, B) bool; each row's target mass is spread evenly over its positives
    (multi-positive InfoNCE). None means the diagonal (standard CLIP).
  label_smoothing: eps of the target mass spread uniformly over all B candidates.
  """
  b = logits.shape[0]
  pos = jnp.eye(b, dtype=bool) if positives is None else positives
  def targets(p):
    t = p / p.sum(-1, keepdims=True)
    return (1 - label_smoothing) * t + label_smoothing / b
  return 0.5 * (_soft_cross_entropy(logits, targets(pos)) + _soft_cross_entropy(logits.T, targets(pos.T)))


def siglip_loss(logits: jax.Array, positives: jax.Array | None = None) -> jax.Array:
  """SigLIP's pairwise sigmoid loss (logits already include scale and bias), as big_vision:
  -sum(log_sigmoid(z * logits)) / B with z = +1 for positives, -1 otherwise."""
  b = logits.shape[0]
  pos = jnp.eye(b, dtype=bool) if positives is None else positives
  z = jnp.where(pos, 1.0, -1.0)
  return -jax.nn.log_sigmoid(z * logits.astype(jnp.float32)).sum() / b


def hard_negative_infonce(query: jax.Array, positive: jax.Array, negative: jax.Array | None = None,
                          scale: float = 20.0, negative_valid: jax.Array | None = None) -> jax.Array:
  """llm2vec's HardNegativeNLLLoss: cosine(query, [positives; hard negatives]) x scale, cross-entropy
  with query i's target at column i. Inputs are global arrays, so every query sees every device's
  candidates, as llm2vec's all-gather does.

  query, positive: (B, D); negative: (B, D), or (B, n, D) for n hard negatives per query (each is
  a candidate for every query, as in llm2vec's concatenation); negative_valid: bool like
  negative's leading dims, False for padding negatives (never scored).
  """
  norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
  b, d = query.shape
  cands = positive
  valid = jnp.ones((b,), bool)
  if negative is not None:
    negative = negative.reshape(-1, d)
    cands = jnp.concatenate([positive, negative], axis=0)
    nv = jnp.ones((negative.shape[0],), bool) if negative_valid is None else negative_valid.reshape(-1)
    valid = jnp.concatenate([valid, nv])
  scores = norm(query.astype(jnp.float32)) @ norm(cands.astype(jnp.float32)).T * scale  # (B, B + B*n)
  scores = jnp.where(valid[None, :], scores, -1e9)
  return cross_entropy(scores, jnp.arange(b))[0]
