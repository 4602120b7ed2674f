"""Every Python block of the README runs, in order, as a user would paste it (reduced sizes where
the README's would take minutes on CPU), so that the README cannot drift from the code."""

import os
import re
import subprocess
import sys

from helpers import REPO

# README text -> what the test runs instead: fewer sampling steps; "runs/default" is a short run
# trained by the test first.
REDUCED = {"num_steps=50": "num_steps=5"}


def python_blocks():
  with open(os.path.join(REPO, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_python_blocks_run(tmp_path):
  blocks = python_blocks()
  assert len(blocks) >= 3
  script = "\n\n".join(blocks)
  for text, reduced in REDUCED.items():
    script = script.replace(text, reduced)
  prelude = (
    "import sys\n"
    f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
    "from helpers import tiny_config\n"
    "from ddpm_jax import train as _train\n"
    "_train.train_and_evaluate(tiny_config(num_train_steps=4), 'runs/default')\n"
  )
  (tmp_path / "readme.py").write_text(prelude + script)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  result = subprocess.run(
    [sys.executable, "readme.py"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"^20 \d", result.stdout, flags=re.M), result.stdout  # step 20 and its loss
