"""Multi-process runs: `jax.distributed` start-up and the few points where processes must agree.

Every process runs the same program over one global mesh. Work that writes shared files (the demo
set, exports) is done by process 0 while the others wait at a barrier, then all read the same files.
"""
from __future__ import annotations

import contextlib
import os

import jax

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def cluster_detected() -> bool:
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1
              or len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize` from explicit values, else JAX_* variables, else what JAX
  auto-detects (SLURM, Cloud TPU). CPU processes exchange collectives through gloo."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only the CPU client reads it
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """All processes wait here until every one has arrived (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_first(name: str):
  """Process 0 runs the body, then the others do (finding its files), so shared files are
  written once. Every process must enter: the barrier counts them."""
  if is_main():
    yield
    barrier(name)
  else:
    barrier(name)
    yield
