"""Samplers driven by the exact ε of Gaussian data, against float64 recursions of the same
linear-Gaussian chains and against the data distribution itself."""

import chex
from conftest import make
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, sampling, schedules

MU, SIGMA = 0.3, 0.5  # data x0 ~ N(μ, σ²) in every dimension
SHAPE = (4000, 2, 2, 1)  # 16,000 independent values
BASE = make(schedules.get_beta_schedule("linear", 1000))


def exact_eps_fn(d):
  """E[ε | x_t] = √(1-ᾱ)(x_t - √ᾱ μ)/(ᾱσ² + 1 - ᾱ) for Gaussian data, at original timestep
  indices."""

  def model_fn(x_t, t):
    a = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1 - a) * (x_t - jnp.sqrt(a) * MU) / (a * SIGMA**2 + 1 - a)

  return model_fn


def _eps_coef(a):
  """ε̂ = c (x_t - √ᾱ μ) with c = √(1-ᾱ)/(ᾱσ² + 1 - ᾱ)."""
  return np.sqrt(1 - a) / (a * SIGMA**2 + 1 - a)


def chain_moments(grid, kind):
  """Mean and variance of the sampler's output, by a float64 recursion x ← A x + B + s z over the
  grid."""
  a_all = np.cumprod(1 - schedules.get_beta_schedule("linear", 1000))
  a = a_all[grid]
  a_prev = np.append(1.0, a[:-1])
  m, v = 0.0, 1.0
  for i in range(len(grid) - 1, -1, -1):
    c = _eps_coef(a[i])
    # x̂0 = (x - √(1-ᾱ) ε̂)/√ᾱ = p x + q
    p = (1 - np.sqrt(1 - a[i]) * c) / np.sqrt(a[i])
    q = np.sqrt(1 - a[i]) * c * np.sqrt(a[i]) * MU / np.sqrt(a[i])
    eps_p, eps_q = c, -c * np.sqrt(a[i]) * MU
    if kind == "ancestral":
      beta = 1 - a[i] / a_prev[i]
      coef1, coef2 = (
        np.sqrt(a_prev[i]) * beta / (1 - a[i]),
        np.sqrt(1 - beta) * (1 - a_prev[i]) / (1 - a[i]),
      )
      A, B, s2 = coef1 * p + coef2, coef1 * q, beta * (1 - a_prev[i]) / (1 - a[i])
    else:  # DDIM, η = 0
      A = np.sqrt(a_prev[i]) * p + np.sqrt(1 - a_prev[i]) * eps_p
      B, s2 = np.sqrt(a_prev[i]) * q + np.sqrt(1 - a_prev[i]) * eps_q, 0.0
    m, v = A * m + B, A**2 * v + s2
  return m, v


def _check_moments(x, grid, kind, var_rel_bias):
  x = np.asarray(x, np.float64).ravel()
  m, v = chain_moments(grid, kind)
  n = x.size
  # The sampler's own distribution, to Monte-Carlo error (5 standard errors) …
  assert x.mean() == pytest.approx(m, abs=5 * np.sqrt(v / n))
  assert x.var() == pytest.approx(v, rel=5 * np.sqrt(2 / n))
  # … and that distribution is the data's, up to the discretisation bias of the chain.
  assert m == pytest.approx(MU, abs=0.01) and v == pytest.approx(SIGMA**2, rel=var_rel_bias)


def test_ancestral_1000_steps_reproduces_gaussian_data():
  x = jax.jit(
    lambda rng: sampling.ddpm_sample(BASE, exact_eps_fn(BASE), rng, SHAPE, clip_denoised=False)
  )(jax.random.key(0))
  _check_moments(x, np.arange(1000), "ancestral", var_rel_bias=0.02)


def test_ddim_50_steps_reproduces_gaussian_data():
  x = jax.jit(
    lambda rng: sampling.ddim_sample(
      BASE, exact_eps_fn(BASE), rng, SHAPE, num_steps=50, clip_denoised=False
    )
  )(jax.random.key(1))
  # DDIM's 50-step discretisation itself shrinks this data's variance by 11 % (the exact chain's
  # value); the bias vanishes as the grid refines.
  _check_moments(x, np.asarray(sampling.space_timesteps(1000, "ddim50")), "ddim", var_rel_bias=0.12)
  biases = [
    abs(
      chain_moments(np.asarray(sampling.space_timesteps(1000, f"ddim{n}")), "ddim")[1] / SIGMA**2
      - 1
    )
    for n in (50, 250, 1000)
  ]
  assert biases[0] > biases[1] > biases[2] and biases[2] < 0.01


def test_ddim_eta_1_is_ancestral_with_posterior_variance():
  rng, x_T = jax.random.key(2), jax.random.normal(jax.random.key(3), (8, 2, 2, 1))
  grid = sampling.space_timesteps(1000, "ddim20")
  respaced = diffusion.respace(BASE, grid)
  ancestral = sampling.ddpm_sample(respaced, exact_eps_fn(BASE), rng, x_T=x_T, clip_denoised=True)
  ddim = sampling.ddim_sample(
    BASE, exact_eps_fn(BASE), rng, x_T=x_T, num_steps=20, eta=1.0, clip_denoised=True
  )
  np.testing.assert_allclose(ddim, ancestral, atol=2e-5)


def test_ddim_decode_of_encode_is_identity_up_to_first_order_error():
  x0 = MU + SIGMA * jax.random.normal(jax.random.key(4), (64, 2, 2, 1))
  model_fn = exact_eps_fn(BASE)
  errors = []
  for n in (250, 500):
    x_T = sampling.ddim_encode(BASE, model_fn, x0, num_steps=n)
    assert float(jnp.std(x_T)) == pytest.approx(1.0, abs=0.05)  # it travelled to the prior N(0, I)
    back = sampling.ddim_sample(
      BASE, model_fn, jax.random.key(5), x_T=x_T, num_steps=n, clip_denoised=False
    )
    errors.append(float(jnp.max(jnp.abs(back - x0))))
  # Both directions are first-order steps of the same ODE: the round-trip error halves with twice
  # the steps.
  assert errors[1] < 0.025 and errors[1] < 0.6 * errors[0], errors


def test_zero_guidance_equals_unguided():
  model_fn, rng, shape = exact_eps_fn(BASE), jax.random.key(6), (8, 2, 2, 1)
  log_prob_fn = lambda x, t: jax.nn.log_softmax(
    jnp.stack([jnp.sum(x, (1, 2, 3)), -jnp.sum(x, (1, 2, 3))], -1)
  )
  cond_fn = sampling.classifier_guidance(log_prob_fn, jnp.zeros(8, jnp.int32), scale=0.0)
  for sample in (sampling.ddpm_sample, sampling.ddim_sample):
    kw = dict(num_steps=20)
    np.testing.assert_allclose(
      sample(BASE, model_fn, rng, shape, cond_fn=cond_fn, **kw),
      sample(BASE, model_fn, rng, shape, **kw),
      atol=1e-6,
    )
  shifted = lambda x, t: model_fn(x, t) + 0.5
  cfg = sampling.classifier_free_guidance(model_fn, shifted, guidance_scale=0.0, num_channels=1)
  np.testing.assert_array_equal(
    sampling.ddim_sample(BASE, cfg, rng, shape), sampling.ddim_sample(BASE, model_fn, rng, shape)
  )


def test_guidance_moves_samples_towards_the_class():
  model_fn, rng, shape = exact_eps_fn(BASE), jax.random.key(7), (256, 2, 2, 1)
  # A "classifier" p(y=0 | x) = sigmoid(Σx): guiding to class 0 raises the samples.
  log_prob_fn = lambda x, t: jax.nn.log_softmax(
    jnp.stack([jnp.sum(x, (1, 2, 3)), jnp.zeros(x.shape[0])], -1)
  )
  cond_fn = sampling.classifier_guidance(log_prob_fn, jnp.zeros(256, jnp.int32), scale=3.0)
  for sample in (sampling.ddpm_sample, sampling.ddim_sample):
    guided = sample(BASE, model_fn, rng, shape, num_steps=50, cond_fn=cond_fn, clip_denoised=False)
    plain = sample(BASE, model_fn, rng, shape, num_steps=50, clip_denoised=False)
    assert float(jnp.mean(guided)) > float(jnp.mean(plain)) + 0.05
  # Classifier-free: (1 + w) ε_c - w ε_u with ε_u that of data mean μ - 0.5 is, for w = 1, exactly
  # the ε of data mean μ + 0.5.
  uncond = lambda x, t: model_fn(x + 0.5 * jnp.sqrt(BASE.alphas_cumprod[t]).reshape(-1, 1, 1, 1), t)
  cfg = sampling.classifier_free_guidance(model_fn, uncond, guidance_scale=1.0, num_channels=1)
  assert float(
    jnp.mean(sampling.ddim_sample(BASE, cfg, rng, shape, clip_denoised=False))
  ) == pytest.approx(MU + 0.5, abs=0.1)


def test_samplers_compile_once_per_shape():
  model_fn = exact_eps_fn(BASE)
  for name, sample in [
    ("ddpm", lambda rng: sampling.ddpm_sample(BASE, model_fn, rng, (4, 2, 2, 1), num_steps=10)),
    ("ddim", lambda rng: sampling.ddim_sample(BASE, model_fn, rng, (4, 2, 2, 1), num_steps=10)),
  ]:
    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(sample, n=1))
    for seed in range(3):
      jitted(jax.random.key(seed)).block_until_ready()


def test_slerp():
  z1 = jnp.array([[1.0, 0.0]]).reshape(1, 1, 1, 2)
  z2 = jnp.array([[0.0, 1.0]]).reshape(1, 1, 1, 2)
  np.testing.assert_allclose(sampling.slerp(z1, z2, 0.0), z1, atol=1e-6)
  np.testing.assert_allclose(sampling.slerp(z1, z2, 1.0), z2, atol=1e-6)
  mid = sampling.slerp(z1, z2, 0.5).ravel()
  np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)  # stays on the circle
  # parallel latents (sin θ = 0): the limit, linear interpolation, not NaN
  z = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
  np.testing.assert_allclose(sampling.slerp(z, z, 0.3), z, rtol=1e-6)
  np.testing.assert_allclose(sampling.slerp(z, 2.0 * z, 0.5), 1.5 * z, rtol=1e-6)


def test_dpm_solver_20_steps_beats_ancestral_250():
  model_fn = exact_eps_fn(BASE)
  shape = (16000, 2, 2, 1)
  dpm = jax.jit(
    lambda rng: sampling.dpm_solver_sample(
      BASE, model_fn, rng, shape, num_steps=20, clip_denoised=False
    )
  )(jax.random.key(8))
  dpm = np.asarray(dpm, np.float64)
  _, ancestral_var = chain_moments(np.asarray(sampling.space_timesteps(1000, [250])), "ancestral")
  _, ddim_var = chain_moments(np.asarray(sampling.space_timesteps(1000, "ddim20")), "ddim")
  mc = SIGMA**2 * 3 * np.sqrt(2 / dpm.size)  # 3 standard errors of the sample variance
  assert abs(dpm.mean() - MU) < 5 * SIGMA / np.sqrt(dpm.size)
  # 20 model evaluations: closer to the data variance than 250-step ancestral sampling and 20-step
  # DDIM.
  assert (
    abs(dpm.var() - SIGMA**2) + mc < abs(ancestral_var - SIGMA**2) < abs(ddim_var - SIGMA**2)
  ), (dpm.var(), ancestral_var, ddim_var)


def test_progress_is_logged_every_tenth_of_the_steps_at_every_run(caplog):
  import logging

  caplog.set_level(logging.INFO)
  sample = jax.jit(
    lambda rng: sampling.ddim_sample(
      BASE, exact_eps_fn(BASE), rng, (4, 2, 2, 1), num_steps=20, progress=True
    )
  )
  for run in range(2):  # the compiled loop runs again (the next batch): it reports again
    jax.block_until_ready(sample(jax.random.key(run)))
    jax.effects_barrier()
  lines = [r.getMessage() for r in caplog.records if "DDIM sampling" in r.getMessage()]
  assert sorted(lines) == sorted(2 * [f"DDIM sampling: step {k} / 20" for k in range(2, 21, 2)])


def test_guidance_channels_guide_the_first_channels_as_dit_samples():
  """sampling.guidance_channels = 3 of a 4-channel learned-Σ model: facebookresearch/DiT's
  forward_with_cfg, written out: the first 3 channels (1 + w) ε_c - w ε_u, the 4th and the variance
  channels the conditional model's."""
  from ml_collections import ConfigDict

  from ddpm_jax.families import base, gaussian

  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  t = jnp.zeros((2,), jnp.int32)
  output = lambda label: lambda x, t: jnp.concatenate([x + (1.0 if label is None else 2.0)] * 2, -1)
  with_condition = lambda label, conditions: output(label)
  config = ConfigDict({"guidance_scale": 0.5, "guidance_rescale": 0.0, "guidance_channels": 3})
  cond = base.Cond(label=jnp.ones((2,), jnp.int32))
  guided = gaussian.free_guidance(with_condition, cond, (), config, 0.5, 4)(x, t)
  conditional, unconditional = output(1)(x, t), output(None)(x, t)
  expected = conditional.at[..., :3].set(1.5 * conditional[..., :3] - 0.5 * unconditional[..., :3])
  np.testing.assert_allclose(guided, expected, rtol=1e-6)
  config.guidance_channels = 0  # all of the mean's
  guided = gaussian.free_guidance(with_condition, cond, (), config, 0.5, 4)(x, t)
  expected = conditional.at[..., :4].set(1.5 * conditional[..., :4] - 0.5 * unconditional[..., :4])
  np.testing.assert_allclose(guided, expected, rtol=1e-6)
