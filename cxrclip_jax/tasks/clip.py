"""LLM2CLIP4CXR, the CLIP stage: a ViT and an LLM text side (cached, LoRA or full) trained with a
contrastive loss on image-report pairs (configs/llm2clip.py).

build(): data dirs (the demo set is built on first use) -> Grain pipelines per process -> text
side (cached frozen-LLM embeddings of every report) -> model and init -> pretrained towers ->
loss -> evaluator. The generic loop (train/loop.py) does the rest.
"""
from __future__ import annotations

import pathlib

import jax

from cxrclip_jax.eval.clip_eval import ClipEvaluator, format_metrics
from cxrclip_jax import sharding
from cxrclip_jax.tasks import clip_setup
from cxrclip_jax.tasks.clip_loss import clamp_scale_in_place, make_loss_fn, temperature_metric
from cxrclip_jax.train.gradcache import check_chunks
from cxrclip_jax.train.task import Task, TrainingError
from data_pipelines import pipelines


def build(config, workdir, mesh, train: bool = True) -> Task:
  """The CLIP task. train=False (evaluate, export) builds no training pipeline."""
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  global_bs = config.data.batch_size
  for divisor, what in ((sharding.batch_divisor(mesh), "the mesh's data x fsdp size"),
                        (jax.process_count(), "the number of processes")):
    if global_bs % divisor or config.data.eval_batch_size % divisor:
      raise TrainingError(f"batch sizes ({global_bs}, {config.data.eval_batch_size}) must be multiples of "
                          f"{what} ({divisor})")

  # optim.contrastive_chunks: the loss embeds each (micro-)batch in that many chunks (GradCache).
  chunks = config.optim.get("contrastive_chunks", 1)
  check_chunks(global_bs // config.optim.accum_steps, chunks)

  # Data: prepared datasets, Grain pipelines per process.
  data_dirs = clip_setup.data_dirs(config)
  text = clip_setup.TextSide(config, mesh, workdir / "text_cache", write_cache=is_main)
  n_train = sum(pipelines.split_sizes(d).get(config.data.train_split, 0) for d in data_dirs)
  steps_per_epoch = n_train // global_bs
  if steps_per_epoch == 0:
    raise TrainingError(f"{n_train} training records is less than one batch of {global_bs}")
  total_steps = config.train.steps or config.train.epochs * steps_per_epoch

  def train_data(start_step: int):
    del start_step  # Grain's iterator state comes back from the checkpoint
    return iter(pipelines.clip_dataset(
        data_dirs, config.data.train_split, batch_size=global_bs,
        image_size=config.data.image_size, tokenizer=text.pipeline_tokenizer, max_length=config.text.max_length,
        seed=config.seed, train=True, process_index=jax.process_index(), process_count=jax.process_count(),
        worker_count=config.data.workers, weights=clip_setup.weights(config, data_dirs), mean=config.data.mean,
        std=config.data.std, shuffle_p=config.data.shuffle_p, instruction=config.text.instruction,
        augment_images=config.data.augment))

  eval_splits = [s for s in config.data.eval_splits.split(",") if s]
  eval_sets = {name: clip_setup.eval_dataset(config, d, s, text.pipeline_tokenizer)
               for name, d, s in clip_setup.eval_targets(data_dirs, eval_splits)}

  # Text side: cached frozen-LLM embeddings of every report (and of the zero-shot prompts). The
  # training split is embedded for evaluation runs too: its statistics standardize the adapter input.
  train_table, eval_tables = text.tables(data_dirs, [config.data.train_split] + eval_splits)

  model, init_inputs = clip_setup.build_model(config, text)
  vocab_size = None if text.mode == "cached" else model.text.vocab_size
  evaluator = ClipEvaluator(model, mesh, eval_sets, eval_tables, text.prompt_inputs(), config.clip.similarity,
                            rules=sharding.rules(config))
  return Task(
      name="clip", model=model,
      init_fn=lambda: model.init({"params": jax.random.key(config.seed)}, *init_inputs),
      loss_fn=make_loss_fn(model, loss=config.clip.loss, multi_positive=config.clip.multi_positive,
                           label_smoothing=config.clip.label_smoothing, contrastive_chunks=chunks),
      total_steps=total_steps, global_batch=global_bs,
      train_data=train_data if train else None, data_in_checkpoint=True,
      device_batch=lambda batch: clip_setup.device_batch(batch, train_table, mesh, vocab_size),
      load_pretrained=lambda params, shardings: clip_setup.load_pretrained(config, params, shardings, text),
      param_groups=clip_setup.param_groups(config), layer_decay=clip_setup.layer_decay(config),
      post_update=clamp_scale_in_place, extra_metrics=temperature_metric(model.clip.similarity),
      evaluate=lambda params, step: {name: evaluator.evaluate(params, name, progress=is_main)
                                     for name in evaluator.datasets},
      format_metrics=format_metrics,
      describe=f"text side {text.family} {config.text.mode} ({text.model_dir}); {steps_per_epoch} steps per epoch")
