"""One jitted CLIP training step: (state, frozen, batch) -> (state, metrics), state donated."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cxrclip_jax import losses
from cxrclip_jax.models.clip import logit_scale
from cxrclip_jax.train.state import TrainState, merge


def text_inputs(batch: dict) -> dict:
  if "text_emb" in batch:
    return {"text_emb": batch["text_emb"]}
  return {k: batch[k] for k in ("input_ids", "attention_mask", "embed_mask")}


def contrastive_loss(logits, batch, loss: str, multi_positive: bool, label_smoothing: float):
  pos = losses.positives_from_ids(batch["text_id"], batch["study_id"]) if multi_positive else None
  if loss == "siglip":
    return losses.siglip_loss(logits, pos)
  return losses.infonce(logits, pos, label_smoothing)


def make_train_step(model, tx: optax.GradientTransformation, *, loss: str = "infonce",
                    multi_positive: bool = True, label_smoothing: float = 0.0):
  similarity_mode = model.clip.similarity
  def loss_fn(params, frozen, batch, rng):
    img, txt, logits = model.apply({"params": merge(params, frozen)}, batch["image"], text_inputs(batch),
                                   deterministic=False, rngs={"dropout": rng})
    value = contrastive_loss(logits, batch, loss, multi_positive, label_smoothing)
    hits = jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0])
    return value, {"i2t_top1": hits.mean()}

  def step(state: TrainState, frozen, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    log_scale = params["logit_scale"] if "logit_scale" in params else frozen["logit_scale"]
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads),
               "temperature": 1.0 / logit_scale(log_scale, similarity_mode), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(step, donate_argnums=0)
