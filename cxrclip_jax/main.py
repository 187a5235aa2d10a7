"""Entry point: python -m cxrclip_jax.main --config=configs/llm2clip.py[:variant] --workdir=DIR

Dispatches on `config.task` (cxrclip_jax/tasks): clip, or llm2vec4cxr (configs/llm2vec4cxr.py).

Config fields can be overridden on the command line (--config.train.epochs=3). Several processes
(--distributed=true) meet through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
or the flags of those names; on SLURM and Cloud TPU JAX finds them itself (see launch/).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cxrclip_jax import host_memory

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, caches and metrics go (resumes if present).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "true", "false"],
                                 "Initialize jax.distributed (auto: when a cluster environment is detected).")
_COORDINATOR = flags.DEFINE_string("jax_coordinator_address", None, "host:port of process 0 (else $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("jax_num_processes", None, "Number of processes (else $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("jax_process_id", None, "This process's index (else $JAX_PROCESS_ID).")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally :variant.", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = flags.FLAGS.config
  if config is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and Grain are chatty at INFO
  if config.get("keep_host_memory", True):
    host_memory.keep_freed_memory()  # before the first JAX computation
  import jax
  from cxrclip_jax import distributed
  if _DISTRIBUTED.value == "true" or (_DISTRIBUTED.value == "auto" and distributed.cluster_detected()):
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)

  from cxrclip_jax.checkpoint import CheckpointError
  from cxrclip_jax.export.keymap import KeyMismatchError
  from cxrclip_jax import tasks
  from data_pipelines.prepare import PrepareError
  from data_pipelines.assets import AssetError
  try:
    tasks.run(config, _WORKDIR.value)
  except (tasks.TrainingError, CheckpointError, KeyMismatchError, PrepareError, AssetError,
          FileNotFoundError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
