"""The Improved DDPM loss-aware timestep sampler against a plain-Python rendering of its
algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion


def _reference_history(num_timesteps, size, updates):
  """Improved DDPM's LossSecondMomentResampler.update_with_all_losses, as plain Python."""
  history, counts = np.zeros((num_timesteps, size)), np.zeros(num_timesteps, int)
  for t, loss in updates:
    if counts[t] == size:
      history[t, :-1] = history[t, 1:]
      history[t, -1] = loss
    else:
      history[t, counts[t]] = loss
      counts[t] += 1
  return history, counts


def test_history_update_matches_reference(rng):
  T, size = 5, 3
  h = diffusion.init_loss_history(T, size)
  updates = []
  for _ in range(6):
    t = rng.integers(0, T, 7)  # duplicates within a batch are applied in order
    losses = rng.uniform(0, 2, 7)
    updates += list(zip(t, losses))
    h = jax.jit(diffusion.update_loss_history)(h, jnp.asarray(t), jnp.asarray(losses))
  history, counts = _reference_history(T, size, updates)
  np.testing.assert_allclose(h.losses, history, rtol=1e-6)
  np.testing.assert_array_equal(h.counts, counts)


def test_probabilities_uniform_until_warm_then_proportional_to_rms(rng):
  T, size = 4, 10
  h = diffusion.init_loss_history(T, size)
  t_warm = np.repeat(np.arange(T - 1), size)
  h = diffusion.update_loss_history(h, jnp.asarray(t_warm), jnp.ones(t_warm.size))
  # step 3 has no history yet
  np.testing.assert_allclose(diffusion.timestep_probs(h), np.full(T, 0.25))
  losses = rng.uniform(0, 3, (T, size))
  h = diffusion.LossHistory(
    losses=jnp.asarray(losses, jnp.float32), counts=jnp.full(T, size, jnp.int32)
  )
  rms = np.sqrt((losses**2).mean(1))
  expected = 0.999 * rms / rms.sum() + 0.001 / T
  np.testing.assert_allclose(diffusion.timestep_probs(h), expected, rtol=1e-5)
  assert float(jnp.sum(diffusion.timestep_probs(h))) == pytest.approx(1.0, abs=1e-6)


def test_importance_weighted_estimate_is_unbiased(rng):
  # E_{t~p}[w_t L_t] must equal the uniform average (1/T) Σ L_t: checked exactly and by Monte Carlo.
  T = 6
  step_losses = np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1])
  h = diffusion.LossHistory(
    losses=jnp.asarray(
      np.tile(step_losses[:, None], (1, 10)) * rng.uniform(0.5, 1.5, (T, 10)), jnp.float32
    ),
    counts=jnp.full(T, 10, jnp.int32),
  )
  probs = np.asarray(diffusion.timestep_probs(h), np.float64)
  t, w = diffusion.sample_timesteps(jax.random.key(0), 400_000, T, h)
  t, w = np.asarray(t), np.asarray(w, np.float64)
  np.testing.assert_allclose(w, 1 / (T * probs[t]), rtol=1e-5)
  assert np.sum(probs * (1 / (T * probs)) * step_losses) == pytest.approx(
    step_losses.mean(), rel=1e-6
  )
  samples = w * step_losses[t]
  assert samples.mean() == pytest.approx(
    step_losses.mean(), abs=4 * samples.std() / np.sqrt(t.size)
  )
  # The sampler visits steps in proportion to p.
  np.testing.assert_allclose(np.bincount(t, minlength=T) / t.size, probs, atol=3e-3)


def test_uniform_sampler():
  t, w = diffusion.sample_timesteps(jax.random.key(1), 100_000, 10)
  assert t.dtype == jnp.int32 and int(t.min()) == 0 and int(t.max()) == 9
  np.testing.assert_allclose(np.bincount(np.asarray(t)) / 1e5, 0.1, atol=5e-3)
  np.testing.assert_array_equal(w, 1.0)
