"""SimCSE, llm2vec's unsupervised stage: the same texts encoded twice with different dropout
(attention-probability dropout 0.3 and LoRA dropout), in-batch InfoNCE at cosine x 20."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cxrclip_jax import losses
from cxrclip_jax.tasks import text_stage
from cxrclip_jax.train.state import merge
from cxrclip_jax.train.task import Task, TrainingError
from data_pipelines import text_batches


def build(config, workdir, mesh, train: bool = True) -> Task:
  s = config.simcse
  ts = text_stage.TextStage(config, workdir, mesh, s)
  model = ts.encoder(attention_dropout=s.attention_dropout)
  texts = [r["report"] for r in ts.rows(config.data.train_split)] if train else []
  batches = text_batches.SimcseBatches(texts, ts.tokenizer, s.batch_size, s.max_length, config.seed,
                                       unit=s.unit, length_multiple=s.length_multiple) if train else None
  steps = config.train.steps or s.steps

  def train_data(start_step: int):
    for step in range(start_step, steps):
      yield batches.batch(step, jax.process_index(), jax.process_count())

  def loss_fn(params, frozen, batch, rng):
    p = merge(params, frozen)
    args = (batch["input_ids"], batch["attention_mask"], batch["embed_mask"])
    first, second = jax.random.split(rng)
    a = model.apply({"params": p}, *args, deterministic=False, rngs={"dropout": first})
    b = model.apply({"params": p}, *args, deterministic=False, rngs={"dropout": second})
    return losses.hard_negative_infonce(a, b, None, scale=s.scale), {}

  ids = jnp.zeros((2, 8), jnp.int32)
  if train and len(set(texts)) < s.batch_size:
    raise TrainingError(f"{len(set(texts))} distinct reports is less than one SimCSE batch of {s.batch_size}")
  return Task(
      name="simcse", model=model,
      init_fn=lambda: model.init({"params": jax.random.key(config.seed)}, ids, jnp.ones_like(ids), jnp.ones_like(ids)),
      loss_fn=loss_fn, total_steps=steps, global_batch=s.batch_size, train_data=train_data,
      device_batch=ts.device_batch, load_pretrained=ts.load_encoder, param_groups=ts.param_groups(),
      evaluate=lambda params, step: {"text_tasks": ts.evaluate(params)},
      format_metrics=lambda name, m: text_stage.text_eval.format_table({name: m}),
      export=ts.export, describe=f"{ts.model_dir.name}, attention dropout {s.attention_dropout}")

