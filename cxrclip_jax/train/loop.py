"""The training loop of every stage, top to bottom: params created sharded -> pretrained weights ->
trainable/frozen split -> optimizer and jitted step -> resume -> loop (step, log and non-finite
check, checkpoint, evaluators) -> final evaluation and metrics.json -> export.

Everything stage-specific comes from a `Task` (train/task.py). The workdir holds config.json,
checkpoints/ (trainable params, optimizer state and, for Grain data, the iterator state),
train_log.jsonl, metrics.json and, when the task exports, export/.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath

from cxrclip_jax import checkpoint, optim, sharding
from cxrclip_jax.train.state import TrainState, merge, split
from cxrclip_jax.train.step import make_train_step
from cxrclip_jax.train.task import Task, TrainingError


@dataclasses.dataclass
class Run:
  config: Any
  workdir: epath.Path
  mesh: Any
  rules: tuple
  task: Task
  state: TrainState
  frozen: dict
  train_step: Any
  checkpointer: checkpoint.Checkpointer

  def params(self) -> dict:
    return merge(self.state.params, self.frozen)

  def evaluate(self, step: int) -> dict:
    if self.task.evaluate is None:
      return {}
    results = self.task.evaluate(self.params(), step)
    if jax.process_index() == 0:
      for name, m in results.items():
        print(self.task.format_metrics(f"{name} (step {step})", m), flush=True)
    return results


def setup(config, workdir, task: Task, mesh) -> Run:
  """Params (created sharded, then overwritten by pretrained weights), optimizer, step, checkpointer."""
  try:
    rules = sharding.rules(config)
    variables, shardings = sharding.init_sharded(task.init_fn, mesh, rules)
    sharding.check_fsdp_coverage(variables["params"], shardings["params"], mesh)
  except ValueError as e:
    raise TrainingError(str(e)) from None
  params = task.load_pretrained(variables["params"], shardings["params"])
  mask = optim.trainable_mask(params, task.param_groups)
  (trainable, frozen), (trainable_sh, frozen_sh) = split(params, mask), split(shardings["params"], mask)
  if not jax.tree.leaves(trainable):
    raise TrainingError("optim.groups freeze every parameter; nothing would train")
  o = config.optim
  tx, lr_schedule = optim.build(trainable, lr=o.lr, total_steps=task.total_steps, warmup_steps=o.warmup_steps,
                                weight_decay=o.weight_decay, b1=o.get("b1", 0.9), b2=o.b2, eps=o.get("eps", 1e-6),
                                grad_clip=o.grad_clip, groups=task.param_groups, layer_decay=task.layer_decay)
  # Every piece of the state is created where the step expects it: its shardings are data,
  # declared to jit for the step's inputs and outputs (and used to restore checkpoints).
  replicated = sharding.replicated(mesh)
  state_sh = TrainState(step=replicated, params=trainable_sh, rng=replicated,
                        opt_state=sharding.opt_state_shardings(tx, trainable, trainable_sh, mesh))
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=trainable,
                     opt_state=jax.jit(tx.init, out_shardings=state_sh.opt_state)(trainable),
                     rng=jax.device_put(jax.random.key_data(jax.random.key(config.seed + 1)), replicated))
  step = make_train_step(task.loss_fn, tx, lr_schedule, accum_steps=o.accum_steps, post_update=task.post_update,
                         extra_metrics=task.extra_metrics, skip_nonfinite=_nonfinite_mode(config) == "skip",
                         shardings=(state_sh, frozen_sh, sharding.batch_sharding(mesh), replicated))
  ckpt = checkpoint.Checkpointer(epath.Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints,
                                 every=config.train.checkpoint_every)
  if jax.process_index() == 0:
    count = lambda t: sum(x.size for x in jax.tree.leaves(t)) / 1e6
    print(f"{task.name}: {task.describe}{'; ' if task.describe else ''}params {count(trainable):.2f}M trainable, "
          f"{count(frozen):.2f}M frozen; {task.total_steps} steps of {task.global_batch} on "
          f"{jax.device_count()} devices", flush=True)
  return Run(config, epath.Path(workdir), mesh, rules, task, state, frozen, step, ckpt)


def restore(run: Run, step: int, data_iterator=None) -> None:
  """Loads the train state (and a Grain iterator, in place) of a checkpointed step into `run`."""
  shardings = jax.tree.map(lambda x: x.sharding, run.state.checkpointed())
  restored = run.checkpointer.restore(step, checkpoint.abstract_like(run.state.checkpointed(), shardings),
                                      data_iterator)
  run.state = TrainState(**restored)


@contextlib.contextmanager
def _finish_saves_on_error(checkpointer):
  """On any error in the loop, let Orbax finish the saves already started, so the last good
  checkpoint is complete on disk before the run stops."""
  try:
    yield
  except BaseException:
    checkpointer.wait()
    raise


def _nonfinite_mode(config) -> str:
  mode = config.train.get("nonfinite", "stop")
  if mode not in ("skip", "stop"):
    raise TrainingError(f"train.nonfinite must be skip or stop, got {mode!r}")
  return mode


class _NonFiniteGuard:
  """Watches each step's `finite` flag as the step leaves the in-flight queue (no extra syncs).

  stop: the first non-finite step ends the run; nothing after the last checkpoint is saved.
  skip: the step's update was not applied (train/step.py); counted, and the run ends after
  `max_skips` such steps in a row."""

  def __init__(self, config, checkpointer):
    self.mode, self.max_skips = _nonfinite_mode(config), int(config.train.get("max_skips", 5))
    self.checkpointer, self.skipped, self.in_a_row = checkpointer, 0, 0

  def check(self, step: int, finite) -> None:
    if bool(finite):
      self.in_a_row = 0
      return
    saved = f"the last checkpoint (step {self.checkpointer.latest_step() or 0}) is intact"
    if self.mode == "stop":
      raise TrainingError(f"non-finite loss or gradient norm at step {step}; {saved}. Lower optim.lr, check "
                          f"the data, or set train.nonfinite=skip")
    self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
    print(f"step {step}: non-finite loss or gradient norm, update skipped ({self.skipped} so far)", flush=True)
    if self.in_a_row > self.max_skips:
      raise TrainingError(f"{self.in_a_row} non-finite steps in a row (train.max_skips={self.max_skips}) at step "
                          f"{step}; {saved}")


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def train_and_evaluate(config, workdir, task: Task, mesh) -> dict:
  workdir = epath.Path(workdir)  # local or object-store (gs://...): all workdir I/O goes through epath
  is_main = jax.process_index() == 0
  if is_main:  # `evaluate` and `export` rebuild the run from this
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
  run = setup(config, workdir, task, mesh)

  # Resume from the latest checkpoint (train state and, for Grain data, the iterator together).
  latest = run.checkpointer.latest_step()
  train_iter = task.train_data(0) if task.data_in_checkpoint else None
  if latest is not None:
    restore(run, latest, train_iter)
    print(f"resumed from step {latest} ({run.checkpointer.directory})", flush=True)
  start = int(run.state.step)
  if train_iter is None:
    train_iter = task.train_data(start)  # step-indexed data: the step is the whole data state

  # The loop: metrics fetched every log_every steps and before every save (the only host syncs).
  c = config.train
  all_finite = jax.jit(_all_finite)
  last_time, last_step = time.perf_counter(), start
  bar = tqdm.tqdm(total=task.total_steps, initial=start, desc=task.name, unit="step", disable=not is_main)
  # At most train.max_in_flight steps dispatched ahead of the device: each queued step holds its
  # batch and, on XLA:CPU, its whole temporary buffer (GBs for a text stage), so an unbounded
  # queue multiplies the step's memory.
  in_flight = collections.deque()
  guard = _NonFiniteGuard(config, run.checkpointer)
  with sharding.activate(run.mesh, run.rules), _finish_saves_on_error(run.checkpointer):
    for step in range(start + 1, task.total_steps + 1):
      if len(in_flight) >= c.max_in_flight:
        guard.check(*in_flight.popleft())
      batch = task.device_batch(next(train_iter))
      run.state, metrics = run.train_step(run.state, run.frozen, batch)
      in_flight.append((step, metrics["finite"]))
      save = step == task.total_steps or run.checkpointer.due(step)
      logged = step % c.log_every == 0 or step == task.total_steps
      if logged or save:  # a checkpoint is never written unchecked
        while in_flight:
          guard.check(*in_flight.popleft())
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["skipped_steps"] = guard.skipped
        if save and not bool(all_finite(run.state.params)):
          raise TrainingError(f"the params became non-finite by step {step}; nothing was saved after step "
                              f"{run.checkpointer.latest_step() or 0}. Lower optim.lr or check the data")
      if logged:
        now = time.perf_counter()
        metrics.update(step=step, examples_per_s=(step - last_step) * task.global_batch / (now - last_time))
        last_time, last_step = now, step
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", ex_s=f"{metrics['examples_per_s']:.0f}")
        if is_main:
          _append_line(workdir / "train_log.jsonl", json.dumps(metrics))
      bar.update(1)
      run.checkpointer.maybe_save(step, run.state.checkpointed(), train_iter if task.data_in_checkpoint else None,
                                  force=save)
      if c.eval_every and step % c.eval_every == 0 and step != task.total_steps:
        _write_metrics(workdir, run.evaluate(step), step, is_main, final=False)
  bar.close()
  close = getattr(train_iter, "close", None)
  if close is not None:
    close()  # stops Grain's worker processes now rather than at garbage collection
  run.checkpointer.wait()

  results = run.evaluate(int(run.state.step))
  _write_metrics(workdir, results, int(run.state.step), is_main, final=True)
  if task.export is not None:
    task.export(run.params(), workdir / "export")
  run.checkpointer.close()
  return results


def _append_line(path: epath.Path, line: str) -> None:
  """Object stores cannot append: the file is rewritten whole (logs stay small)."""
  old = path.read_text() if path.exists() else ""
  path.write_text(old + line + "\n")


def _write_metrics(workdir: epath.Path, results: dict, step: int, is_main: bool, final: bool) -> None:
  """metrics.json at the end; every evaluation also appended to eval_log.jsonl (stage by stage)."""
  if not is_main or not results:
    return
  _append_line(workdir / "eval_log.jsonl", json.dumps({"step": step, **results}, sort_keys=True))
  if final:
    (workdir / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"metrics written to {workdir / 'metrics.json'}", flush=True)
