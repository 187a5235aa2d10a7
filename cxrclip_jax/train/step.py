"""One jitted training step for every task: (state, frozen, batch) -> (state, metrics), state donated.

A task supplies only its loss, `loss_fn(params, frozen, batch, rng) -> (loss, aux)`, where `loss`
is a mean over its batch and `aux` a dict of scalar metrics. `aux["weight"]`, when present, is what
that mean is over (e.g. the number of masked tokens): gradient accumulation then weighs
micro-batches by it, so k micro-batches give exactly the full batch's token-mean gradient.

Gradient accumulation (maxtext style) splits the global batch *inside* the step: the schedule,
the optimizer count and every logged figure stay in optimizer updates, and `grad_norm` is the
norm of the accumulated gradient. Micro-batch i takes rows i, i+k, i+2k, ... so each device keeps
working on its own rows. A contrastive loss over micro-batches sees only micro-batch negatives
(exact large-batch contrastive gradients need gradient caching instead).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cxrclip_jax.train.state import TrainState

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]


def _micro_batch(batch: dict, i: jax.Array, k: int) -> dict:
  """Rows i, i+k, ... of every (B, ...) leaf: a local reshape when each device's rows divide by k."""
  def take(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)
  return jax.tree.map(take, batch)


def accumulated_grads(loss_fn: LossFn, params, frozen, batch: dict, rng: jax.Array, accum_steps: int = 1):
  """(loss, aux, grads) of the whole batch, computed in `accum_steps` sequential micro-batches."""
  if accum_steps == 1:
    (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, frozen, batch, rng), has_aux=True)(params)
    return loss, aux, grads

  def weighted(p, micro, r):
    loss, aux = loss_fn(p, frozen, micro, r)
    w = jax.lax.stop_gradient(jnp.asarray(aux.get("weight", 1.0), jnp.float32))
    return loss * w, (loss, w, aux)
  grad_fn = jax.value_and_grad(weighted, has_aux=True)

  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if any(b % accum_steps for b in sizes):
    raise ValueError(f"batch sizes {sorted(sizes)} are not divisible by accum_steps={accum_steps}")

  def body(i, carry):
    total, weight, aux_sum, grad_sum = carry
    (wl, (_, w, aux)), g = grad_fn(params, _micro_batch(batch, i, accum_steps), jax.random.fold_in(rng, i))
    aux_sum = jax.tree.map(lambda a, b: a + b * w, aux_sum, aux)
    return total + wl, weight + w, aux_sum, jax.tree.map(jnp.add, grad_sum, g)

  # Shapes of one micro-step's aux, to start the sums at zero.
  aux_shape = jax.eval_shape(lambda: grad_fn(params, _micro_batch(batch, 0, accum_steps), rng)[0][1][2])
  init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
          jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), aux_shape),
          jax.tree.map(jnp.zeros_like, params))
  total, weight, aux_sum, grad_sum = jax.lax.fori_loop(0, accum_steps, body, init)
  weight = jnp.maximum(weight, 1e-12)
  aux = jax.tree.map(lambda a: a / weight, aux_sum)
  if "weight" in aux:
    aux["weight"] = weight
  return total / weight, aux, jax.tree.map(lambda g: g / weight, grad_sum)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    accum_steps: int = 1, post_update: Callable[[Any], Any] | None = None,
                    extra_metrics: Callable[[Any, Any], dict] | None = None, skip_nonfinite: bool = False,
                    shardings: tuple | None = None):
  """The jitted, donated step.

  schedule: the optimizer's base learning-rate schedule (logged as `lr`: the rate this update used).
  post_update: params -> params after `apply_updates` (e.g. clamping a logit scale in place, as the
    released LLM2CLIP code does, so the forward pass needs no gradient-killing clip).
  extra_metrics: (params, frozen) -> dict of scalars logged with the step's metrics.
  skip_nonfinite: a step whose loss or gradient norm is not finite leaves params and optimizer
    state as they were (the step count and data still advance). `metrics["finite"]` says which.
  shardings: (state, frozen, batch, metrics) shardings (or prefixes) declared to jit, so inputs
    and outputs are laid out as the trainer decided rather than as propagation guesses.
  """
  def step(state: TrainState, frozen, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, aux, grads = accumulated_grads(loss_fn, state.params, frozen, batch, rng, accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if post_update is not None:
      params = post_update(params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": finite.astype(jnp.float32),
               **{k: v for k, v in aux.items() if k != "weight"}}
    if extra_metrics is not None:
      metrics.update(extra_metrics(params, frozen))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  state_sh, frozen_sh, batch_sh, metrics_sh = shardings
  return jax.jit(step, donate_argnums=0, in_shardings=(state_sh, frozen_sh, batch_sh),
                 out_shardings=(state_sh, metrics_sh))
