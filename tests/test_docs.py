"""Every Python block of the README and of docs/*.md runs, in order, as a user would paste it
(reduced sizes where the text's would take minutes on CPU), so that the documentation cannot drift
from the code; the pages the README links exist."""

import glob
import os
import re
import subprocess
import sys

from helpers import REPO

# Text -> what the test runs instead: fewer sampling steps; "runs/default" is a short run trained by
# the test first.
REDUCED = {"num_steps=50": "num_steps=5"}
PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def python_blocks(path):
  with open(path) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_links_every_docs_page_and_each_exists():
  with open(os.path.join(REPO, "README.md")) as f:
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)\)", f.read()))
  on_disk = {os.path.relpath(p, REPO) for p in PAGES[1:]}
  assert linked == on_disk, (linked, on_disk)


def test_python_blocks_of_the_readme_and_the_docs_run(tmp_path):
  script = []
  for path in PAGES:
    for i, block in enumerate(python_blocks(path)):
      for text, reduced in REDUCED.items():
        block = block.replace(text, reduced)
      name = f"{os.path.relpath(path, REPO)} block {i + 1}"
      script.append(f"print({name!r}, 'runs', flush=True)\n{block}")
  assert len(script) >= 4
  prelude = (
    "import sys\n"
    f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
    "from helpers import tiny_config\n"
    "from ddpm_jax import train as _train\n"
    "_train.train_and_evaluate(tiny_config(num_train_steps=4), 'runs/default')\n"
  )
  (tmp_path / "docs.py").write_text(prelude + "\n\n".join(script))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  result = subprocess.run(
    [sys.executable, "docs.py"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-3000:]
  assert re.search(r"^20 \d", result.stdout, flags=re.M), result.stdout  # step 20 and its loss
