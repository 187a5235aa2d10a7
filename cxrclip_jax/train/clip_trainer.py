"""LLM2CLIP trainer, top to bottom: mesh -> data -> text side -> model and shapes -> params created
sharded -> optimizer and step -> resume -> evaluator -> loop -> final evaluation.

Everything a run needs is in the config (configs/llm2clip.py); everything it produces is in the
workdir: config.json, checkpoints/ (train state + Grain iterator state), text_cache/,
train_log.jsonl and metrics.json. `setup` is shared with `python -m cxrclip_jax.evaluate`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from cxrclip_jax import checkpoint, optim, sharding
from cxrclip_jax.eval.clip_eval import ClipEvaluator, format_metrics
from cxrclip_jax.train import clip_setup
from cxrclip_jax.train.clip_step import make_train_step
from cxrclip_jax.train.state import TrainState, merge, split
from data_pipelines import pipelines


class TrainingError(RuntimeError):
  pass


@dataclasses.dataclass
class Run:
  config: Any
  workdir: pathlib.Path
  mesh: Any
  global_batch: int
  total_steps: int
  train_data: Any
  train_table: clip_setup.TrainTable | None
  model: Any
  state: TrainState
  frozen: dict
  train_step: Callable
  evaluator: ClipEvaluator
  checkpointer: checkpoint.Checkpointer

  def evaluate(self, step: int, progress: bool = True) -> dict:
    params = merge(self.state.params, self.frozen)
    results = {name: self.evaluator.evaluate(params, name, progress=progress) for name in self.evaluator.datasets}
    if jax.process_index() == 0:
      for name, m in results.items():
        print(format_metrics(f"{name} (step {step})", m), flush=True)
    return results


def setup(config, workdir, devices=None) -> Run:
  """Everything before the loop. `devices` (default: all) is for tests that compare meshes."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  # 1. Mesh. The global batch is split over data x fsdp and over processes.
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  global_bs = config.data.batch_size
  for divisor, what in ((sharding.batch_divisor(mesh), "the mesh's data x fsdp size"),
                        (jax.process_count(), "the number of processes")):
    if global_bs % divisor or config.data.eval_batch_size % divisor:
      raise TrainingError(f"batch sizes ({global_bs}, {config.data.eval_batch_size}) must be multiples of "
                          f"{what} ({divisor})")

  # 2. Data: prepared datasets (the demo set is built on first use), Grain pipelines per process.
  data_dirs = clip_setup.data_dirs(config)
  text = clip_setup.TextSide(config, mesh, workdir / "text_cache", write_cache=is_main)
  n_train = sum(pipelines.split_sizes(d).get(config.data.train_split, 0) for d in data_dirs)
  steps_per_epoch = n_train // global_bs
  if steps_per_epoch == 0:
    raise TrainingError(f"{n_train} training records is less than one batch of {global_bs}")
  total_steps = config.train.steps or config.train.epochs * steps_per_epoch
  train_data = pipelines.clip_dataset(
      data_dirs, config.data.train_split, batch_size=global_bs,
      image_size=config.data.image_size, tokenizer=text.pipeline_tokenizer, max_length=config.text.max_length,
      seed=config.seed, train=True, process_index=jax.process_index(), process_count=jax.process_count(),
      worker_count=config.data.workers, weights=clip_setup.weights(config, data_dirs), mean=config.data.mean,
      std=config.data.std, shuffle_p=config.data.shuffle_p, instruction=config.text.instruction,
      augment_images=config.data.augment)
  eval_splits = [s for s in config.data.eval_splits.split(",") if s]
  eval_sets = {name: clip_setup.eval_dataset(config, d, s, text.pipeline_tokenizer)
               for name, d, s in clip_setup.eval_targets(data_dirs, eval_splits)}

  # 3. Text side: cached frozen-LLM embeddings of every report (and of the zero-shot prompts).
  train_table, eval_tables = text.tables(data_dirs, [config.data.train_split] + eval_splits)

  # 4. Model and shapes.
  model, init_inputs = clip_setup.build_model(config, text)
  init_fn = lambda: model.init({"params": jax.random.key(config.seed)}, *init_inputs)

  # 5. Params created already sharded; pretrained towers loaded into them.
  variables, param_shardings = sharding.init_sharded(init_fn, mesh)
  params = clip_setup.load_pretrained(config, variables["params"], param_shardings["params"], text)

  # 6. Optimizer over the trainable subtree only, and the jitted step.
  groups = clip_setup.param_groups(config)
  trainable, frozen = split(params, optim.trainable_mask(params, groups))
  if not jax.tree.leaves(trainable):
    raise TrainingError("optim.groups freeze every parameter; nothing would train")
  tx, lr_schedule = optim.build(trainable, lr=config.optim.lr, total_steps=total_steps,
                                warmup_steps=config.optim.warmup_steps, weight_decay=config.optim.weight_decay,
                                b2=config.optim.b2, grad_clip=config.optim.grad_clip, groups=groups,
                                layer_decay=clip_setup.layer_decay(config))
  state = sharding.on_mesh(TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                                      opt_state=jax.jit(tx.init)(trainable),
                                      rng=jax.random.key_data(jax.random.key(config.seed + 1))), mesh)
  if is_main:
    count = lambda t: sum(x.size for x in jax.tree.leaves(t)) / 1e6
    print(f"text side: {config.text.mode} ({text.model_dir}); params: {count(trainable):.2f}M trainable, "
          f"{count(frozen):.2f}M frozen; {total_steps} steps of {global_bs} ({steps_per_epoch} per epoch) "
          f"on {jax.device_count()} devices", flush=True)
  train_step = make_train_step(model, tx, lr_schedule, loss=config.clip.loss,
                               multi_positive=config.clip.multi_positive, label_smoothing=config.clip.label_smoothing,
                               accum_steps=config.optim.accum_steps)

  # 7. Evaluation on the eval splits (features gathered to every host, scored in numpy).
  evaluator = ClipEvaluator(model, mesh, eval_sets, eval_tables, text.prompt_inputs(), config.clip.similarity)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                 every=config.train.checkpoint_every)
  return Run(config, workdir, mesh, global_bs, total_steps, train_data, train_table, model, state, frozen,
             train_step, evaluator, ckpt)


def restore(run: Run, step: int, data_iterator=None) -> None:
  """Loads the train state (and the data iterator, in place) of a checkpointed step into `run`."""
  shardings = jax.tree.map(lambda x: x.sharding, run.state.checkpointed())
  restored = run.checkpointer.restore(step, checkpoint.abstract_like(run.state.checkpointed(), shardings),
                                      data_iterator)
  run.state = TrainState(**restored)


def load_run(workdir, step: int | None = None) -> tuple[Run, int]:
  """Rebuilds a run from its workdir's config.json and restores a checkpoint (default: the latest)."""
  import ml_collections
  workdir = pathlib.Path(workdir)
  try:
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  except (OSError, ValueError) as e:
    raise TrainingError(f"{workdir} is not a training workdir ({workdir / 'config.json'}: {e})") from None
  run = setup(config, workdir)
  steps = run.checkpointer.all_steps()
  if not steps:
    raise checkpoint.CheckpointError(f"no checkpoints in {run.checkpointer.directory}")
  step = steps[-1] if step is None else step
  restore(run, step)
  return run, step


def _close(iterator) -> None:
  """Stops Grain's worker processes now rather than at garbage collection."""
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


@contextlib.contextmanager
def _finish_saves_on_error(checkpointer):
  """On any error in the loop, let Orbax finish the saves already started, so the last good
  checkpoint is complete on disk before the run stops."""
  try:
    yield
  except BaseException:
    checkpointer.wait()
    raise


def train_and_evaluate(config, workdir) -> dict:
  run = setup(config, workdir)
  is_main = jax.process_index() == 0
  if is_main:  # `evaluate` rebuilds the run from this
    (run.workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
  train_iter = iter(run.train_data)

  # 8. Resume from the latest checkpoint in the workdir (train state and data iterator together).
  latest = run.checkpointer.latest_step()
  if latest is not None:
    restore(run, latest, train_iter)
    print(f"resumed from step {latest} ({run.checkpointer.directory})", flush=True)

  # 9. The loop: metrics fetched every log_every steps (the only host sync), NaN check there.
  c = config.train
  start = int(run.state.step)
  vocab_size = None if config.text.mode == "cached" else run.model.text.vocab_size
  all_finite = jax.jit(lambda tree: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))
  last_time, last_step = time.perf_counter(), start
  bar = tqdm.tqdm(total=run.total_steps, initial=start, desc="train", unit="step", disable=not is_main)
  with sharding.activate(run.mesh), _finish_saves_on_error(run.checkpointer):
    for step in range(start + 1, run.total_steps + 1):
      batch = clip_setup.device_batch(next(train_iter), run.train_table, run.mesh, vocab_size)
      run.state, metrics = run.train_step(run.state, run.frozen, batch)
      save = step == run.total_steps or run.checkpointer.due(step)
      if step % c.log_every == 0 or save:  # a checkpoint is never written unchecked
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
        if bad or (save and not bool(all_finite(run.state.params))):
          what = f"{bad[0]} became {metrics[bad[0]]}" if bad else "the params became non-finite"
          raise TrainingError(f"{what} at step {step}; nothing was saved after step "
                              f"{run.checkpointer.latest_step() or 0}. Lower optim.lr or check the data")
      if step % c.log_every == 0 or step == run.total_steps:
        now = time.perf_counter()
        metrics.update(step=step, examples_per_s=(step - last_step) * run.global_batch / (now - last_time))
        last_time, last_step = now, step
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", ex_s=f"{metrics['examples_per_s']:.0f}")
        if is_main:
          with open(run.workdir / "train_log.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
      bar.update(1)
      run.checkpointer.maybe_save(step, run.state.checkpointed(), train_iter, force=save)
      if c.eval_every and step % c.eval_every == 0 and step != run.total_steps:
        run.evaluate(step, progress=is_main)
  bar.close()
  _close(train_iter)
  run.checkpointer.wait()

  # 10. Final evaluation, written to metrics.json.
  results = run.evaluate(int(run.state.step), progress=is_main)
  if is_main:
    (run.workdir / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"metrics written to {run.workdir / 'metrics.json'}", flush=True)
  run.checkpointer.close()
  return results
