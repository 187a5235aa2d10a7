"""Timing helpers shared by the benchmarks: alternate the sides in blocks, report median ratios.

This machine is noisy; running the sides in alternating blocks (and reversing the order every
round) and taking the median of per-round ratios cancels slow drift and bursts of other load.
"""
import argparse
import statistics
import time

from cxrclip_jax import host_memory


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """Parses the benchmark's flags and, unless --release_host_memory, keeps freed host memory in
  the process as the project's entry points do (one setting for both sides of the comparison)."""
  parser.add_argument("--release_host_memory", action="store_true",
                      help="leave glibc's default malloc (freed buffers go back to the kernel every step)")
  args = parser.parse_args()
  if not args.release_host_memory:
    host_memory.keep_freed_memory()
  return args


def timed(fn, n: int) -> float:
  """Mean seconds per call over n calls (fn must block until its result is ready)."""
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n


def alternate(sides: dict, rounds: int, steps: int) -> dict[str, list[float]]:
  """{name: [seconds per call, one per round]} with the sides run in alternating order.

  Each block starts with one untimed call: the first call after switching sides pays for the
  other side's use of caches and of the process heap (a JAX step right after a torch step
  page-faults its temporaries in again), a cost neither side has in a run of its own.
  """
  times = {name: [] for name in sides}
  for r in range(rounds):
    for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
      sides[name]()
      times[name].append(timed(sides[name], steps))
  return times


def median_ratio(a: list[float], b: list[float]) -> float:
  return statistics.median(x / y for x, y in zip(a, b))
