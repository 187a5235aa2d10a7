"""The CLIP stage's loss: (trainable, frozen, batch, rng) -> (loss, aux), and its step for tests
and benchmarks (the trainer builds the same step through train/loop.py)."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from cxrclip_jax import losses
from cxrclip_jax.models.clip import clamp_log_scale, logit_scale, text_inputs
from cxrclip_jax.train.gradcache import chunked_apply
from cxrclip_jax.train.state import merge
from cxrclip_jax.train.step import make_train_step as make_generic_step


def contrastive_loss(logits, batch, loss: str, multi_positive: bool, label_smoothing: float):
  pos = losses.positives_from_ids(batch["text_id"], batch["study_id"]) if multi_positive else None
  if loss == "siglip":
    return losses.siglip_loss(logits, pos)
  return losses.infonce(logits, pos, label_smoothing)


def make_loss_fn(model, *, loss: str = "infonce", multi_positive: bool = True, label_smoothing: float = 0.0,
                 contrastive_chunks: int = 1):
  """contrastive_chunks > 1: both towers embed the batch in that many checkpointed chunks
  (train/gradcache.py) and the loss still scores the whole batch: the full-batch gradient with
  one chunk's activations in memory (the text side in cached mode is only the adapter)."""
  def embed(variables, inputs, rng):
    return model.apply(variables, inputs["image"], inputs["text"], deterministic=False, rngs={"dropout": rng},
                       method=lambda m, im, tx, deterministic: (m.encode_image(im, deterministic),
                                                                m.encode_text(tx, deterministic)))

  def loss_fn(params, frozen, batch, rng):
    variables = {"params": merge(params, frozen)}
    img, txt = chunked_apply(embed, variables, {"image": batch["image"], "text": text_inputs(batch)}, rng,
                             contrastive_chunks)  # (B, E) each
    logits = model.apply(variables, img, txt, method=lambda m, i, t: m.logits(i, t))  # (B, B)
    value = contrastive_loss(logits, batch, loss, multi_positive, label_smoothing)
    hits = jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0])
    return value, {"i2t_top1": hits.mean()}
  return loss_fn


def clamp_scale_in_place(params):
  """The released training code's `logit_scale.clamp_(0, ln 100)` after each optimizer step."""
  if "logit_scale" not in params:
    return params
  return {**params, "logit_scale": clamp_log_scale(params["logit_scale"])}


def temperature_metric(similarity_mode: str):
  def temperature(params, frozen):
    log_scale = params["logit_scale"] if "logit_scale" in params else frozen["logit_scale"]
    return {"temperature": 1.0 / logit_scale(log_scale, similarity_mode)}
  return temperature


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule, *, loss: str = "infonce",
                    multi_positive: bool = True, label_smoothing: float = 0.0, accum_steps: int = 1,
                    contrastive_chunks: int = 1):
  return make_generic_step(make_loss_fn(model, loss=loss, multi_positive=multi_positive,
                                        label_smoothing=label_smoothing, contrastive_chunks=contrastive_chunks),
                           tx, schedule, accum_steps=accum_steps, post_update=clamp_scale_in_place,
                           extra_metrics=temperature_metric(model.clip.similarity))
