"""Timing on noisy machines: the compared functions run in turns, so that drifts in speed hit all
alike."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

from absl import flags
import numpy as np

from ddpm_jax.runtime import host_memory

flags.DEFINE_enum(
  "host_allocator",
  "tbbmalloc",
  host_memory.HOST_ALLOCATORS,
  "The malloc of the benchmark process, for both libraries (ddpm_jax/runtime/host_memory.py): "
  "with glibc's "
  "default, XLA:CPU faults its ~1 GB of per-step temporaries in anew each step, and that costs far "
  "more right after the other library's step has churned memory (a JAX train step 2.1 – 2.7 s "
  "after a PyTorch step instead of 1.4 – 1.6 s). 'tbbmalloc' restarts the benchmark with it "
  "preloaded.",
)

# OpenMP (PyTorch) and XLA worker threads busy-wait for a while after their work; were the next
# library timed at once, it would share the two cores with them.
IDLE_SECONDS = 1.0


def machine_description() -> str:
  """The CPU model, its core count and JAX's devices: every benchmark prints it with its figures."""
  import jax

  model = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    names = [line for line in open("/proc/cpuinfo") if line.startswith("model name")]
    model = names[0].split(":", 1)[1].strip() if names else model
  devices = jax.devices()
  return f"{model}, {os.cpu_count()} cores; JAX {jax.__version__} on {len(devices)} × {devices[0]}"


def setup_host_memory() -> None:
  """Applies --host_allocator; call it first in main(): it may restart the process, and must come
  before JAX's backend starts."""
  host_memory.use_host_allocator(flags.FLAGS.host_allocator)
  print(f"host allocator: {flags.FLAGS.host_allocator}", flush=True)


def interleaved_seconds(
  fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, np.ndarray]:
  """Seconds per call of each function, timed in turns (a, b, a, b, …) after one warm-up call each,
  so that drifts in this noisy machine's speed hit all of them alike; ratios are taken per turn."""
  for fn in fns.values():
    fn()  # warm-up (and compilation)
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      time.sleep(IDLE_SECONDS)  # the other library's worker threads stop spinning
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: np.asarray(t) for name, t in times.items()}


def speedup_summary(slower: np.ndarray, faster: np.ndarray) -> str:
  """The per-turn ratio slower / faster of two `interleaved_seconds` series: median and range."""
  ratios = slower / faster
  spread = f"range {ratios.min():.2f}–{ratios.max():.2f}"
  return f"{np.median(ratios):.2f}× (median of {len(ratios)} alternating turns; {spread})"
