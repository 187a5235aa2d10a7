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
  from cxrclip_jax import host_memory
  from cxrclip_jax.checkpoint import CheckpointError
  host_memory.keep_freed_memory()
  from cxrclip_jax import tasks
  try:
    run, step = tasks.load(workdir, _STEP.value)
    results = run.evaluate(step)
  except (tasks.TrainingError, CheckpointError, FileNotFoundError, ValueError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 1
  latest = step == run.checkpointer.all_steps()[-1]
  name = "metrics.json" if latest else f"metrics_step_{step}.json"
  (workdir / name).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
  print(f"metrics written to {workdir / name}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
