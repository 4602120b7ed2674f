"""Samplers of the reverse process and the timestep respacing they run on.

`space_timesteps` picks the steps to keep; `diffusion.respace` builds the `GaussianDiffusion` on them.
"""
from __future__ import annotations

from typing import Sequence


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
  """The timesteps to keep from range(num_timesteps), sorted (Improved DDPM §4, its `space_timesteps`).

  section_counts:
    "ddimN"        the DDIM grid 0, s, 2s, … with the integer stride s that gives exactly N steps;
    [n1, n2, …]    split [0, T) into equal sections and take n_i evenly spaced steps (ends included) in
                   section i; also accepted as the string "n1,n2,…".
  """
  if num_timesteps <= 0:
    raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired:
          return list(range(0, num_timesteps, stride))
      raise ValueError(f"No integer stride gives exactly {desired} DDIM steps out of {num_timesteps}.")
    section_counts = [int(x) for x in section_counts.split(",")]
  section_counts = list(section_counts)
  if not section_counts or any(c <= 0 for c in section_counts):
    raise ValueError(f"section_counts must be positive step counts, got {section_counts}.")
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, steps = 0, set()
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f"Cannot take {count} steps from a section of {size} steps.")
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):  # accumulated, as the reference code does, so rounding ties agree with it
      steps.add(start + round(position))
      position += stride
    start += size
  return sorted(steps)
