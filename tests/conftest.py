"""Shared fixtures: small schedules and float64 reference quantities computed from βs in numpy."""

import os
import tempfile

# One persistent XLA compilation cache for this test session and the subprocesses it starts: the
# many small training runs compile the same tiny programs. Set before JAX is imported.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ddpm_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np
import pytest

from ddpm_jax import diffusion, schedules


@pytest.fixture(params=["linear", "cosine"])
def betas(request):
  return schedules.get_beta_schedule(request.param, 100)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


# The slow tier: training runs, the command line, several processes, the notebook and the docs. The
# fast tier, `pytest -m "not slow"`, is the math, the samplers, the models and the config checks,
# in under 2 minutes on 2 cores; single slow tests elsewhere carry `@pytest.mark.slow`.
SLOW_MODULES = {
  "test_context",
  "test_convert",
  "test_convert_flags",
  "test_datasets",
  "test_docs",
  "test_edit_mode",
  "test_notebook",
  "test_pipeline",
  "test_super_res",
  "test_train",
}


# The extended tier (`@pytest.mark.extended`, also slow): tests that train for minutes to reach a
# quality bar (guidance accuracy, probe accuracy, PSNR, moments) and the benchmarks' CPU runs. CI
# deselects them (-m "not extended") to stay within its 30 minutes on 2 cores; run them with
# `pytest -n 2 -m extended tests` (about 7 minutes there) after a change to what they train.


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: the slow tier (deselect with -m 'not slow')")
  config.addinivalue_line("markers", "extended: minutes of training each (CI: -m 'not extended')")


def pytest_collection_modifyitems(items):
  for item in items:
    if item.module.__name__ in SLOW_MODULES or item.get_closest_marker("extended"):
      item.add_marker(pytest.mark.slow)


def make(betas, **kw):
  return diffusion.GaussianDiffusion.from_betas(betas, **kw)


def alphas_cumprod64(betas):
  return np.cumprod(1.0 - np.asarray(betas, np.float64))
