"""Timing on noisy machines: the compared functions run in turns, so that drifts in speed hit all alike."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

# OpenMP (PyTorch) and XLA worker threads busy-wait for a while after their work; were the next library timed
# at once, it would share the two cores with them.
IDLE_SECONDS = 1.0


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, np.ndarray]:
  """Seconds per call of each function, timed in turns (a, b, a, b, …) after one warm-up call each, so that
  drifts in this noisy machine's speed hit all of them alike; ratios are taken per turn."""
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
  return f"{np.median(ratios):.2f}× (median of {len(ratios)} alternating turns; range {ratios.min():.2f}–{ratios.max():.2f})"
