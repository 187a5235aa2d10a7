"""Supervised contrastive stage (llm2vec's HardNegativeNLLLoss): instructed queries against
positives and one-error hard negatives, cosine x scale (run_supervised.py: 50), every device's
candidates scored by every query (the loss sees global arrays), one task per global batch.

The CXR tasks (data_pipelines.text_tasks): findings -> impression, abbreviated <-> expanded (report
and sentence), telegraphic shorthand / impression-only / reordered <-> original; hard negatives are
the positive with one injected clinical error. Texts of the evaluation split are kept out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cxrclip_jax import losses
from cxrclip_jax.tasks import text_stage
from cxrclip_jax.train.gradcache import check_chunks, chunked_apply
from cxrclip_jax.train.state import merge
from cxrclip_jax.train.task import Task, TrainingError
from data_pipelines import assets, text_batches, text_tasks


def build(config, workdir, mesh, train: bool = True) -> Task:
  s = config.supervised
  ts = text_stage.TextStage(config, workdir, mesh, s)
  model = ts.encoder()
  steps = config.train.steps or s.steps
  chunks = config.optim.get("contrastive_chunks", 1)
  check_chunks(s.batch_size // config.optim.accum_steps, chunks)
  batches = None
  if train:
    held_out = text_tasks.eval_texts(ts.eval_sets(capped=False))
    examples = text_batches.cached_training_examples(
        ts.rows(config.data.train_split), assets.cache_dir() / "text_tasks", config.seed, exclude=sorted(held_out))
    examples, cut = text_batches.drop_cut_reports(examples, ts.tokenizer, s.max_length)
    if cut:
      print(f"supervised: {cut} impression -> report examples dropped, their reports longer than "
            f"{s.max_length} tokens (the cut removes the impression the query states)", flush=True)
    if len(examples) < s.batch_size:
      raise TrainingError(f"{len(examples)} supervised examples is less than one batch of {s.batch_size}")
    batches = text_batches.SupervisedBatches(examples, ts.tokenizer, s.batch_size, s.max_length, config.seed,
                                             n_negatives=s.n_negatives, length_multiple=s.length_multiple,
                                             mixture=s.task_mixture)

  def train_data(start_step: int):
    for step in range(start_step, steps):
      yield batches.batch(step, jax.process_index(), jax.process_count())

  ids = jnp.zeros((2, 8), jnp.int32)
  return Task(
      name="supervised", model=model,
      init_fn=lambda: model.init({"params": jax.random.key(config.seed)}, ids, jnp.ones_like(ids), jnp.ones_like(ids)),
      loss_fn=make_loss_fn(model, s.scale, chunks),
      total_steps=steps, global_batch=s.batch_size, train_data=train_data,
      device_batch=ts.device_batch, load_pretrained=ts.load_encoder, param_groups=ts.param_groups(),
      evaluate=lambda params, step: {"text_tasks": ts.evaluate(params)},
      format_metrics=lambda name, m: text_stage.text_eval.format_table({name: m}),
      export=ts.export, describe=f"{ts.model_dir.name}, {s.n_negatives} hard negatives per query, scale {s.scale}")


def make_loss_fn(model, scale: float, contrastive_chunks: int = 1):
  """(params, frozen, batch, rng) -> (loss, aux) of llm2vec's HardNegativeNLLLoss over the global batch.

  contrastive_chunks > 1 (train/gradcache.py): each chunk of queries is embedded with its own
  positives and negatives, in checkpointed chunks; the loss still scores every query against the
  whole global batch's candidates, so the gradient is the single pass's.
  """
  def embed(variables, texts, rng):
    # One encoder pass over queries, positives and negatives (the batch has one L): a third of the
    # program to compile, and larger matmuls than three passes. Query-major rows (query i, its
    # positive, its negatives, query i+1, ...): each device keeps its own examples' texts, where
    # concatenating [queries; positives; negatives] along the sharded batch axis moved rows.
    b, n, l = texts["negative_input_ids"].shape
    rows = lambda key: jnp.concatenate([texts["query_" + key][:, None], texts["positive_" + key][:, None],
                                        texts["negative_" + key]], axis=1).reshape(-1, l)  # (b*(2+n), L)
    emb = model.apply(variables, rows("input_ids"), rows("attention_mask"), rows("embed_mask"),
                      deterministic=False, rngs={"dropout": rng})
    emb = emb.reshape(b, 2 + n, emb.shape[-1])
    return emb[:, 0], emb[:, 1], emb[:, 2:]  # (b, D), (b, D), (b, n, D)

  def loss_fn(params, frozen, batch, rng):
    texts = {f"{part}_{key}": batch[f"{part}_{key}"] for part in ("query", "positive", "negative")
             for key in ("input_ids", "attention_mask", "embed_mask")}
    q, pos, neg = chunked_apply(embed, {"params": merge(params, frozen)}, texts, rng, contrastive_chunks)
    neg = neg.reshape(-1, q.shape[-1])  # (B*n, D), query-major as the batch's negatives
    loss = losses.hard_negative_infonce(q, pos, neg, scale=scale, negative_valid=batch["negative_valid"])
    # In-batch accuracy: the positive outscores every other candidate (negatives included).
    norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    own_neg = jnp.einsum("bd,bnd->bn", norm(q), norm(neg).reshape(q.shape[0], -1, q.shape[-1]))
    own_neg = jnp.where(batch["negative_valid"], own_neg, -jnp.inf)
    beats_errors = (jnp.sum(norm(q) * norm(pos), -1) > own_neg.max(-1)).mean()
    return loss, {"beats_own_negatives": beats_errors}
  return loss_fn
