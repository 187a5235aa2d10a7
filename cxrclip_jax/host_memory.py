"""Keep freed host memory in the process (glibc), so that every jitted step stops re-faulting it.

XLA:CPU allocates each execution's temporaries as one buffer (2.8 GB for an MNTP step of
SmolLM2-135M at B=8, L=128) and frees it afterwards; glibc hands such a buffer back to the kernel,
so the next step page-faults and zeroes all of it again: 685k faults and 2-10 s of kernel time
per step on a 2-core VM. With one malloc arena, no mmap'd chunks and no trimming, the freed
buffer is reused as it is: 0 faults; the demo's CLIP step went from 350 to 270 ms and the MNTP
step from 8.7-10 s to 7.4-8 s.

The cost: the process keeps its peak heap until it exits (a training or embedding job does so
anyway), and one arena can fragment: resident size stayed flat over the CLIP steps, but settles
at ~2.5x the default's in a synthetic MLP loop (tests/test_host_memory.py). It must run before the first JAX computation (XLA's threads pick their malloc
arena on their first allocation). Off with CXRCLIP_KEEP_HOST_MEMORY=0; a no-op off glibc.
"""
from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h


def keep_freed_memory() -> bool:
  """Applies the glibc malloc settings above; True if they were applied."""
  if os.environ.get("CXRCLIP_KEEP_HOST_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = ctypes.CDLL(None).mallopt
  # -1 is "never trim" (glibc reads the threshold as unsigned).
  return all(mallopt(option, value) == 1
             for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
