"""Re-evaluate a trained dual tower: python -m cxrclip_jax.evaluate --workdir=DIR [--step=N]

Rebuilds the run from DIR/config.json (written by the trainer), restores the checkpoint (the
latest unless --step), evaluates the configured splits and prints the table. Writes
DIR/metrics.json for the latest step, DIR/metrics_step_N.json for an earlier one.
"""
import json
import pathlib
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (has config.json and checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  workdir = pathlib.Path(_WORKDIR.value)
  try:
    config_json = json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError) as e:
    print(f"error: {workdir} is not a training workdir ({workdir / 'config.json'}: {e})", file=sys.stderr)
    return 1
  import ml_collections
  from cxrclip_jax.checkpoint import CheckpointError
  from cxrclip_jax.train import clip_trainer
  config = ml_collections.ConfigDict(config_json)
  try:
    run = clip_trainer.setup(config, workdir)
    steps = run.checkpointer.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoints in {run.checkpointer.directory}")
    step = steps[-1] if _STEP.value is None else _STEP.value
    clip_trainer.restore(run, step)
    results = run.evaluate(step)
  except (clip_trainer.TrainingError, CheckpointError, FileNotFoundError, ValueError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 1
  name = "metrics.json" if step == steps[-1] else f"metrics_step_{step}.json"
  (workdir / name).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
  print(f"metrics written to {workdir / name}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
