"""β schedules against their defining formulas, computed here independently in float64."""

import math

import numpy as np
import pytest

from ddpm_jax import schedules


def test_linear_is_ddpm_schedule_scaled_by_1000_over_T():
  np.testing.assert_allclose(
    schedules.get_beta_schedule("linear", 1000)[[0, -1]], [1e-4, 0.02], rtol=1e-12
  )
  betas = schedules.get_beta_schedule("linear", 4000)
  np.testing.assert_allclose(betas[[0, -1]], [2.5e-5, 0.005], rtol=1e-12)
  np.testing.assert_allclose(np.diff(betas), np.diff(betas)[0], rtol=1e-9)


def test_cosine_alpha_bar_matches_cos_squared():
  T, s = 1000, 0.008
  alphas_cumprod = np.cumprod(1 - schedules.get_beta_schedule("cosine", T))
  f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
  expected = np.array([f(t + 1) / f(0) for t in range(T)])
  # The cap β ≤ 0.999 only binds at the very last step.
  np.testing.assert_allclose(alphas_cumprod[:-1], expected[:-1], rtol=1e-10, atol=1e-14)
  assert schedules.get_beta_schedule("cosine", T).max() == pytest.approx(0.999)


def test_quadratic_sigmoid_constant():
  T = 10
  np.testing.assert_allclose(
    np.sqrt(schedules.get_beta_schedule("quadratic", T, beta_start=1e-4, beta_end=0.04)),
    np.linspace(0.01, 0.2, T),
    rtol=1e-12,
  )
  sig = schedules.get_beta_schedule("sigmoid", T, beta_start=0.1, beta_end=0.3)
  x = np.linspace(-6, 6, T)
  np.testing.assert_allclose(sig, 0.1 + 0.2 / (1 + np.exp(-x)), rtol=1e-12)
  np.testing.assert_array_equal(
    schedules.get_beta_schedule("constant", T, beta_end=0.3), np.full(T, 0.3)
  )


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_every_schedule_is_float64_in_unit_interval(name):
  for T in (100, 1000, 4000):
    betas = schedules.get_beta_schedule(name, T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert np.all((betas > 0) & (betas < 1))


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="known: constant, cosine, linear, quadratic, sigmoid"):
    schedules.get_beta_schedule("cosin", 10)
  for T in (0, -3, 2.5):
    with pytest.raises(ValueError, match="positive integer"):
      schedules.get_beta_schedule("linear", T)
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    schedules.get_beta_schedule("linear", 10, beta_end=1.5)
  with pytest.raises(ValueError, match=r"\(0, 1\)"):  # 0.02 · 1000/T reaches 1 below T = 20
    schedules.get_beta_schedule("linear", 10)
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    schedules.check_betas(np.array([0.1, 0.0]))
