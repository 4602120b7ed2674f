"""Files of a workdir, on local disk or in a bucket (gs://…), through etils.epath as orbax's
checkpoints are.

A bucket path needs the filesystem backend epath uses for it (e.g. `pip install gcsfs` for gs://).
"""

from __future__ import annotations

import hashlib
import io

from etils import epath
import numpy as np


def save_npz(path: str | epath.Path, **arrays: np.ndarray) -> epath.Path:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path.write_bytes(buffer.getvalue())
  return path


def load_npz(path: str | epath.Path) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as data:
    return dict(data)


def digest(path: str | epath.Path) -> str:
  """The SHA-256 of a file's bytes ("absent" where there is none)."""
  path = epath.Path(path)
  return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"
