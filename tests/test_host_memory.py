"""host_memory.keep_freed_memory: a jitted step's temporaries are reused, not page-faulted anew."""
import os
import platform
import subprocess
import sys

import pytest

# A two-layer MLP step whose activations and gradients are 64 MB temporaries. The heap settles
# within ~50 steps (at ~2.5x the default's resident size in this allocation pattern; flat for the
# CLIP step); the steps after that are counted.
_PROBE = """
import resource, sys
from cxrclip_jax import host_memory
if sys.argv[1] == "keep":
  assert host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
def loss(w, x):
  return jnp.sum(jnp.tanh(x @ w[0]) @ w[1])
step = jax.jit(lambda w, x: jax.tree.map(lambda a, g: a - 0.1 * g, w, jax.grad(loss)(w, x)))
w, x = [jnp.full((64, 2048), 0.01), jnp.full((2048, 64), 0.01)], jnp.ones((8192, 64))
for i in range(80):
  if i == 60:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  w = jax.block_until_ready(step(w, x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
  # glibc's default malloc: the Makefile's glibc.malloc.hugetlb=1 faults 2 MiB pages instead.
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")
def test_freed_temporaries_are_reused_without_page_faults():
  released, kept = _faults("release"), _faults("keep")
  print(f"minor page faults over 20 steady-state steps: glibc default {released}, kept {kept}")
  assert released > 100_000      # every step faults its temporaries in again (16k pages per 64 MB)...
  assert kept * 10 < released    # ...unless freed memory stays in the process (0 once the heap settles)


def test_opt_out(monkeypatch):
  from cxrclip_jax import host_memory
  monkeypatch.setenv("CXRCLIP_KEEP_HOST_MEMORY", "0")
  assert host_memory.keep_freed_memory() is False
