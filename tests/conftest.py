"""Shared fixtures: small schedules and float64 reference quantities computed from βs in numpy."""
import numpy as np
import pytest

from ddpm_jax import diffusion, schedules


@pytest.fixture(params=["linear", "cosine"])
def betas(request):
  return schedules.get_beta_schedule(request.param, 100)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def make(betas, **kw):
  return diffusion.GaussianDiffusion.from_betas(betas, **kw)


def alphas_cumprod64(betas):
  return np.cumprod(1.0 - np.asarray(betas, np.float64))
