"""LLM2VEC4CXR: the text-encoder stages (config.stages, e.g. mntp,simcse,supervised) in a chain.

Each stage runs in W/<stage>/ through the generic loop (resumable; a finished stage — its export
and metrics.json present — is not run again) and starts from the previous stage's merged export.
The last export is copied to W/export/ and the stage-by-stage text-task table is printed and
written to W/metrics.json.
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax

from cxrclip_jax import distributed
from cxrclip_jax.export import hf
from cxrclip_jax.train.task import TrainingError
from data_pipelines import assets
from data_pipelines.tokenization import resolve_wrapper

STAGES = ("mntp", "simcse", "supervised")


def stage_config(config, stage: str, model_dir: str, wrapper: str):
  """The chain's config seen by one stage: its task, input model and optimizer settings."""
  c = config.copy_and_resolve_references()
  c.unlock()
  s = c[stage]
  c.task, c.model_dir, c.text.wrapper = stage, str(model_dir), wrapper
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = s.lr, s.warmup_steps, s.weight_decay
  c.lock()
  return c


def run(config, workdir, devices=None) -> dict:
  from cxrclip_jax import tasks  # the generic runner (tasks/__init__.py)
  from cxrclip_jax.eval.text_tasks import format_table
  workdir = pathlib.Path(workdir)
  stages = [s for s in config.stages.split(",") if s]
  unknown = [s for s in stages if s not in STAGES]
  if not stages or unknown:
    raise TrainingError(f"config.stages={config.stages!r}: each stage must be one of {', '.join(STAGES)}")
  base = pathlib.Path(config.model_dir or assets.path("smollm2"))
  # Resolve "auto" once from the base model's name: exports do not carry it.
  wrapper = resolve_wrapper(config.text.wrapper, hf.read_config(base).get("_name_or_path", ""))
  model_dir, results = base, {}
  for stage in stages:
    w = workdir / stage
    if (w / "export" / "config.json").is_file() and (w / "metrics.json").is_file():
      print(f"{stage}: done already ({w}), reusing its export", flush=True)
      results[stage] = json.loads((w / "metrics.json").read_text())
    else:
      results[stage] = tasks.run(stage_config(config, stage, model_dir, wrapper), w, devices)
    model_dir = w / "export"
  if jax.process_index() == 0:
    final = workdir / "export"
    if final.exists():
      shutil.rmtree(final)
    shutil.copytree(model_dir, final)
    table = {s: r["text_tasks"] for s, r in results.items() if "text_tasks" in r}
    print(format_table(table), flush=True)
    (workdir / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"LLM2VEC4CXR exported to {final}", flush=True)
  distributed.barrier(f"export {workdir}")
  return results
