"""The Colab quick start runs: its code cells, in order, in reduced mode (QUICKSTART_FAST=1)."""

import json
import os
import subprocess
import sys

from helpers import REPO


def test_quickstart_notebook_runs(tmp_path):
  with open(os.path.join(REPO, "notebooks", "quickstart.ipynb")) as f:
    notebook = json.load(f)
  cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
  assert len(cells) >= 5
  script = tmp_path / "quickstart.py"
  script.write_text("\n\n".join(cells))
  env = dict(
    os.environ,
    QUICKSTART_FAST="1",
    MPLBACKEND="Agg",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
  )
  result = subprocess.run(
    [sys.executable, str(script)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 0: loss" in result.stdout
