"""normal_kl and the discretised decoder likelihood against Monte Carlo and brute-force
integration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ddpm_jax import losses


def test_normal_kl_matches_monte_carlo(rng):
  m1, lv1, m2, lv2 = 0.3, np.log(0.5), -0.2, np.log(2.0)
  x = rng.normal(m1, np.exp(0.5 * lv1), size=2_000_000)
  mc = np.mean(
    stats.norm.logpdf(x, m1, np.exp(0.5 * lv1)) - stats.norm.logpdf(x, m2, np.exp(0.5 * lv2))
  )
  kl = float(losses.normal_kl(m1, lv1, m2, lv2))
  assert kl == pytest.approx(mc, abs=3e-3)
  assert float(losses.normal_kl(m1, lv1, m1, lv1)) == pytest.approx(0.0, abs=1e-7)


BIN_CENTRES = np.linspace(-1.0, 1.0, 256)


@pytest.mark.parametrize(
  "mean,log_scale",
  [
    (0.0, np.log(0.3)),
    (0.7, np.log(0.01)),
    (-0.999, np.log(1e-3)),
    (3.0, np.log(0.5)),
    (0.2, np.log(5.0)),
  ],
)
def test_discretized_likelihood_is_a_distribution_over_256_bins(mean, log_scale):
  x = jnp.asarray(BIN_CENTRES, jnp.float32)
  logp = losses.discretized_gaussian_log_likelihood(
    x, jnp.full_like(x, mean), jnp.full_like(x, log_scale)
  )
  assert np.all(np.isfinite(logp))
  assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=1e-5)
  # Brute force: each bin's probability mass from scipy in float64, edges to ±∞.
  edges = np.concatenate([[-np.inf], (BIN_CENTRES[:-1] + BIN_CENTRES[1:]) / 2, [np.inf]])
  mass = np.diff(stats.norm.cdf(edges, mean, np.exp(log_scale)))
  significant = mass > 1e-6
  np.testing.assert_allclose(
    np.exp(np.asarray(logp))[significant], mass[significant], rtol=2e-4, atol=1e-7
  )


def test_discretized_likelihood_far_tail_is_finite_with_finite_gradient():
  x = jnp.array([0.5, -1.0, 1.0])
  f = lambda m: jnp.sum(losses.discretized_gaussian_log_likelihood(x, m, jnp.full(3, np.log(1e-3))))
  means = jnp.array([-0.9, 0.9, -0.9])  # hundreds of σ away from every bin
  assert np.isfinite(float(f(means)))
  assert np.all(np.isfinite(np.asarray(jax.grad(f)(means))))


def test_mean_flat():
  x = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_allclose(losses.mean_flat(x), [5.5, 17.5])
