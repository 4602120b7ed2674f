"""The project's own exception types and argument checks (a leaf module: every layer uses them)."""

import numpy as np


class InvalidConfigError(ValueError):
  """A config that cannot run, with every problem found (the command line prints it alone)."""


def _dtype(x) -> np.dtype:
  """x's dtype without converting it (a traced array cannot be)."""
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)


def check_batch(t=None, *, integer_t: bool = True, **arrays) -> None:
  """The public math's inputs (shapes and dtypes are static: raised at trace time, before anything
  compiles): the first of `arrays` (by name) a floating array [B, ...], the others of its shape,
  and t (where given) [B], integer timesteps where `integer_t`. ValueError naming the argument."""
  (name, x), *others = arrays.items()
  if np.ndim(x) < 2 or not np.issubdtype(_dtype(x), np.floating):
    raise ValueError(
      f"{name} must be a floating array [B, ...]; got shape {np.shape(x)} and dtype {_dtype(x)}."
    )
  for other, y in others:
    if np.shape(y) != np.shape(x):
      raise ValueError(f"{other} must have the shape of {name} {np.shape(x)}; got {np.shape(y)}.")
  if t is None:
    return
  if np.ndim(t) != 1 or np.shape(t)[0] != np.shape(x)[0]:
    raise ValueError(
      f"t must have shape [B] matching the batch of {name} {np.shape(x)}, got {np.shape(t)}."
    )
  if integer_t and not np.issubdtype(_dtype(t), np.integer):
    raise ValueError(f"t must be integer timesteps; got dtype {_dtype(t)}.")
