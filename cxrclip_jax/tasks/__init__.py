"""Training stages, one module each, dispatched on `config.task`.

  clip         LLM2CLIP4CXR (configs/llm2clip.py)
  llm2vec4cxr  the text-encoder chain of the stages below (configs/llm2vec4cxr.py)
  mntp, simcse, supervised   one LLM2VEC4CXR stage each (run by the chain, one workdir each)

`run` trains a config in a workdir; `load` rebuilds a finished or interrupted run for `evaluate`
and `export` (model and params only: no training pipeline, no optimizer step).
"""
from __future__ import annotations

import importlib
import json

from etils import epath

from cxrclip_jax import checkpoint, sharding
from cxrclip_jax.train import loop
from cxrclip_jax.train.task import TrainingError

TASKS = ("clip", "llm2vec4cxr", "mntp", "simcse", "supervised")


def module(name: str):
  if name not in TASKS:
    raise TrainingError(f"unknown config.task {name!r}; known: {', '.join(TASKS)}")
  return importlib.import_module(f"cxrclip_jax.tasks.{name}")


def run(config, workdir, devices=None) -> dict:
  """Trains (resuming when the workdir has checkpoints) and evaluates; returns the final metrics."""
  m = module(config.get("task", "clip"))
  if hasattr(m, "run"):  # a chain of stages runs itself
    return m.run(config, workdir, devices)
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  return loop.train_and_evaluate(config, workdir, m.build(config, workdir, mesh), mesh)


def load(workdir, step: int | None = None, devices=None):
  """(Run, step) of a workdir: its config.json rebuilt, the checkpoint (default: latest) restored."""
  import ml_collections
  workdir = epath.Path(workdir)
  try:
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  except (OSError, ValueError) as e:
    raise TrainingError(f"{workdir} is not a training workdir ({workdir / 'config.json'}: {e})") from None
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  task = module(config.get("task", "clip")).build(config, workdir, mesh, train=False)
  r = loop.setup(config, workdir, task, mesh)
  steps = r.checkpointer.all_steps()
  if not steps:
    raise checkpoint.CheckpointError(f"no checkpoints in {r.checkpointer.directory}")
  step = steps[-1] if step is None else step
  loop.restore(r, step)
  return r, step
