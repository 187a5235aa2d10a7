"""Exact large-batch contrastive gradients in bounded activation memory ("GradCache").

A contrastive loss couples every example of the global batch, so gradient accumulation over
micro-batches (train/step.py) changes the loss: each micro-batch sees only its own negatives.
GradCache (Gao et al., 2021) keeps the loss over the whole batch and bounds memory instead:
  1. embed the batch in c chunks without keeping any chunk's activations (only its embeddings),
  2. compute the loss and its gradient w.r.t. the (B, D) embeddings over the whole batch,
  3. re-run each chunk's forward and back-propagate its rows of that embedding gradient.

In JAX this is one expression, `lax.map(jax.checkpoint(embed_chunk), chunk_ids)`: under
`jax.grad` the map's forward saves only what the checkpointed body takes in (the batch and the
params, loop invariants that are not stacked, and the chunk index), the loss's backward gives
the embeddings' cotangent, and the map's backward recomputes chunk j's forward before its VJP —
steps 1-3 above, with autodiff doing the bookkeeping, so the gradients are the single-pass
full-batch ones up to float reassociation (param gradients are summed over chunks). Peak
activation memory is one chunk's forward + backward, plus the (B, D) embeddings
(`jax.ad_checkpoint.print_saved_residuals` shows no per-chunk activations; the compiled
temporary memory falls with c: benchmarks/gradcache_memory.py).

Rows: chunk j takes rows j, j+c, j+2c, ... (as `_micro_batch` in train/step.py). With the batch
sharded over ("data", "fsdp") in contiguous blocks, `(B, ...) -> (B/c, c, ...)` keeps dim 0 on the
same devices when each device's rows divide by c, so every device embeds its own rows of every
chunk and no example moves between devices (tests/test_gradcache.py checks the compiled program);
contiguous chunks (rows j*B/c ...) would put a whole chunk on a few devices and leave the others
idle. When a device's rows do not divide by c the result is still exact, but the partitioner
moves rows (all-gathers of the inputs): pick c dividing batch / (data x fsdp). Outputs are put
back in the batch's row order.

Randomness: chunk j runs with `fold_in(rng, j)`, so a training forward with dropout is a valid
dropout forward but not the same masks as one pass over the batch with `rng`; exactness against
the single pass holds for the deterministic forward (dropout off or zero rates). Models with
batch-coupled state (BatchNorm statistics) would also differ per chunk; the towers here have none
(LayerNorm / RMSNorm only). c = 1 calls `fn` once with `rng` itself: today's program exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def check_chunks(batch_size: int, chunks: int) -> None:
  if chunks < 1 or batch_size % chunks:
    raise ValueError(f"optim.contrastive_chunks={chunks} must be >= 1 and divide the global batch "
                     f"({batch_size} rows)")


def _batch_axis(x: jax.Array, axis: int) -> jax.Array:
  """Pins dim `axis` to the batch's mesh axes (logical `act_batch`), the others unsharded, so the
  partitioner does not choose a 2-D tiling of (B/c, c) over data x fsdp (which moves rows between
  devices). A no-op outside a mesh with rules (sharding.activate)."""
  return nn.with_logical_constraint(x, tuple("act_batch" if i == axis else None for i in range(x.ndim)))


def _rows(x: jax.Array, c: int) -> jax.Array:
  """(B, ...) -> (B/c, c, ...): a local reshape; [:, j] is chunk j, rows j, j+c, ..."""
  return _batch_axis(x.reshape((x.shape[0] // c, c) + x.shape[1:]), 0)


def _join(x: jax.Array) -> jax.Array:
  """(c, B/c, ...) stacked chunk outputs -> (B, ...) in the batch's row order."""
  x = jnp.moveaxis(_batch_axis(x, 1), 0, 1)
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def chunked_apply(fn: Callable[[Any, Any, jax.Array], Any], params, inputs, rng: jax.Array, chunks: int = 1):
  """fn(params, inputs, rng) -> outputs, computed in `chunks` checkpointed chunks of rows.

  inputs: a pytree of (B, ...) arrays (one batch axis first, e.g. images (B, H, W, 3), negatives
    (B, n, L)); outputs: a pytree of (b, ...) arrays with one row per input row (embeddings).
  Differentiate through it w.r.t. params: the backward recomputes one chunk at a time.
  """
  if chunks == 1:
    return fn(params, inputs, rng)
  sizes = {x.shape[0] for x in jax.tree.leaves(inputs)}
  if len(sizes) != 1:
    raise ValueError(f"chunked inputs need one batch size, got {sorted(sizes)}")
  check_chunks(sizes.pop(), chunks)
  rows = jax.tree.map(lambda x: _rows(x, chunks), inputs)

  # The chunk is sliced *inside* the checkpointed body, from the whole (loop-invariant) batch: the
  # map then saves no residual but the chunk index. Mapping over a (c, B/c, ...) transposed copy
  # instead would save that copy, another batch of images, for the backward.
  @jax.checkpoint
  def body(p, xs, j):
    chunk = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, j, axis=1, keepdims=False), xs)
    return fn(p, chunk, jax.random.fold_in(rng, j))

  out = jax.lax.map(lambda j: body(params, rows, j), jnp.arange(chunks))  # leaves (c, B/c, ...)
  return jax.tree.map(_join, out)
