"""Inpainting, colorization and SDEdit driven by the exact denoiser of jointly Gaussian data (a
non-diagonal covariance), against the closed-form conditional Gaussian and the data distribution,
on Gaussian diffusion, the σ-space solvers, score-SDE predictor-corrector sampling and VDM."""

from conftest import make
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import editing, sampling, schedules, sde, vdm

# x0 ~ N(μ, Σ) over the 4 pixels of a [1, 4, 1] image (a correlated row)
MU = np.array([0.2, -0.1, 0.0, 0.1])
SIGMA = 0.2 * np.array(
  [[1.0, 0.8, 0.6, 0.4], [0.8, 1.0, 0.8, 0.6], [0.6, 0.8, 1.0, 0.8], [0.4, 0.6, 0.8, 1.0]]
)
KNOWN, UNKNOWN = [0, 2], [1, 3]
X_KNOWN = np.array([0.5, 0.3])
BATCH = 2000
BASE = make(schedules.get_beta_schedule("linear", 1000))


def posterior_mean(mu, cov, x, a, s):
  """E[x0 | x = a x0 + s ε] for x0 ~ N(μ, Σ), x [B, D], a and s [B] (Gaussian conditioning)."""
  dims = len(mu)
  cov, mu = jnp.asarray(cov, jnp.float32), jnp.asarray(mu, jnp.float32)

  def one(x, a, s):
    return mu + a * cov @ jnp.linalg.solve(a**2 * cov + s**2 * jnp.eye(dims), x - a * mu)

  return jax.vmap(one)(x, a, s)


def flat(x):
  return x.reshape(x.shape[0], -1)


def exact_eps_fn(mu=MU, cov=SIGMA):
  alphas_cumprod = jnp.asarray(np.cumprod(1 - np.asarray(BASE.betas, np.float64)), jnp.float32)

  def model_fn(x_t, t):
    a, s = jnp.sqrt(alphas_cumprod[t]), jnp.sqrt(1 - alphas_cumprod[t])
    x0 = posterior_mean(mu, cov, flat(x_t), a, s)
    return ((flat(x_t) - a[:, None] * x0) / s[:, None]).reshape(x_t.shape)

  return model_fn


def exact_denoiser(mu=MU, cov=SIGMA):
  return lambda x, sigma: posterior_mean(mu, cov, flat(x), jnp.ones_like(sigma), sigma).reshape(
    x.shape
  )


def conditional(mu, cov, observe, value):
  """The law of x0 given observe @ x0 = value: (mean, covariance)."""
  gain = cov @ observe.T @ np.linalg.inv(observe @ cov @ observe.T)
  return mu + gain @ (value - observe @ mu), cov - gain @ observe @ cov


def known_images():
  x = np.zeros((BATCH, 1, 4, 1), np.float32)
  x[:, 0, KNOWN, 0] = X_KNOWN
  mask = np.zeros((1, 1, 4, 1), np.float32)
  mask[0, 0, KNOWN, 0] = 1.0
  return jnp.asarray(x), jnp.asarray(mask)


def inpainting_errors(trajectory, resample, seed=0):
  """(max |mean error|, max |covariance error|) of the unknown pixels' law against the closed
  form."""
  x_known, mask = known_images()
  inpaint = jax.jit(
    lambda rng: editing.inpaint_along(trajectory, rng, x_known, mask, resample=resample)
  )
  out = np.asarray(inpaint(jax.random.key(seed)))[:, 0, :, 0]
  np.testing.assert_array_equal(
    out[:, KNOWN], np.broadcast_to(X_KNOWN.astype(np.float32), (BATCH, 2))
  )
  selection = np.eye(4)[KNOWN]
  mean, cov = conditional(MU, SIGMA, selection, X_KNOWN)
  unknown = out[:, UNKNOWN]
  return (
    np.max(np.abs(unknown.mean(0) - mean[UNKNOWN])),
    np.max(np.abs(np.cov(unknown.T) - cov[np.ix_(UNKNOWN, UNKNOWN)])),
  )


def test_repaint_schedule_is_the_reference_walk():
  def get_schedule_jump(t_T, jump_length, jump_n_sample):  # RePaint's scheduler.py, transcribed
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
      t = t - 1
      ts.append(t)
      if jumps.get(t, 0) > 0:
        jumps[t] = jumps[t] - 1
        for _ in range(jump_length):
          t = t + 1
          ts.append(t)
    ts.append(-1)
    return ts

  for n, resample, jump in [(10, 1, 1), (10, 3, 1), (20, 4, 5), (25, 10, 10), (7, 2, 3)]:
    # RePaint's timestep t is level n - 1 - t; its jumps go up one step at a time
    levels = [n - 1 - t for t in get_schedule_jump(n, jump, resample)]
    walk = [levels[0]]
    for i, j in sampling.repaint_schedule(n, resample, jump):
      walk += list(range(i + 1, j + 1)) if j > i else list(range(i - 1, j - 1, -1))
    assert walk == levels, (n, resample, jump)


@pytest.mark.slow  # (the fast tier's 2 minutes: seconds of training or sampling)
def test_inpainting_approaches_the_conditional_gaussian_as_resampling_grows():
  trajectory = sampling.ddpm_trajectory(BASE, exact_eps_fn(), clip_denoised=False)
  plain_mean_error, plain_cov_error = inpainting_errors(trajectory, resample=1)
  mean_error, cov_error = inpainting_errors(trajectory, resample=6)
  # replacing the known pixels alone ignores how they should steer the unknown ones early on
  assert plain_mean_error > 0.05 and plain_cov_error > 0.01
  # the conditional std is 0.2-0.26: its Monte-Carlo standard error over 2,000 samples ~0.006
  assert mean_error < 0.025 and cov_error < 0.008, (mean_error, cov_error)


def test_the_design_functions_keep_the_known_pixels_and_sdedit_spans_input_to_sample():
  model_fn, rng = exact_eps_fn(), jax.random.key(1)
  x_known, mask = known_images()
  out = editing.inpaint(BASE, model_fn, rng, x_known[:8], mask, num_steps=20, resample=2, jump=2)
  np.testing.assert_array_equal(
    np.asarray(out)[:, 0, KNOWN, 0], np.asarray(x_known)[:8, 0, KNOWN, 0]
  )
  x_input = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, 1, 4, 1)), jnp.float32)
  # t0 -> 0: no step is left, the input comes back exactly; one step of 50 moves it by ~√β
  np.testing.assert_array_equal(editing.sdedit(BASE, model_fn, rng, x_input, 1e-3, 50), x_input)
  nearly = editing.sdedit(BASE, model_fn, rng, x_input, 1 / 50, 50)
  assert 0 < float(jnp.max(jnp.abs(nearly - x_input))) < 0.2
  # t0 = T: the input is forgotten, the output is a sample of the data
  out = np.asarray(editing.sdedit(BASE, model_fn, rng, x_input, 1.0))[:, 0, :, 0]
  np.testing.assert_allclose(out.mean(0), MU, atol=0.04)
  np.testing.assert_allclose(np.cov(out.T), SIGMA, atol=0.03)
  with pytest.raises(ValueError, match="strength"):
    editing.sdedit(BASE, model_fn, rng, x_input, 0.0)


@pytest.mark.slow  # (the fast tier's 2 minutes: seconds of training or sampling)
def test_colorization_matches_the_conditional_gaussian_of_its_grey_value():
  # one pixel's three correlated channels; the grey value is their mean
  mu, cov = (
    np.array([0.3, -0.2, 0.1]),
    0.15 * np.array([[1, 0.6, 0.3], [0.6, 1, 0.6], [0.3, 0.6, 1]]),
  )
  gray = jnp.full((BATCH, 1, 1, 1), 0.4)
  trajectory = sampling.ddpm_trajectory(BASE, exact_eps_fn(mu, cov), clip_denoised=False)
  out = np.asarray(
    jax.jit(lambda rng: editing.colorize_along(trajectory, rng, gray, 3, resample=6))(
      jax.random.key(2)
    )
  )[:, 0, 0, :]
  np.testing.assert_allclose(out.mean(-1), 0.4, atol=1e-6)
  mean, want_cov = conditional(mu, cov, np.full((1, 3), 1 / 3), np.array([0.4]))
  np.testing.assert_allclose(out.mean(0), mean, atol=0.025)
  np.testing.assert_allclose(np.cov(out.T), want_cov, atol=0.008)
  with pytest.raises(ValueError, match=r"gray must be NHWC images \[B, H, W, 1\]"):
    editing.colorize(BASE, exact_eps_fn(mu, cov), jax.random.key(2), gray[..., 0])


def test_the_sigma_space_and_score_sde_trajectories_inpaint_and_sample():
  # Euler-ancestral on EDM's grid with the exact D(x; σ); VP's ancestral predictor, exact score
  sigmas = np.asarray(sampling.karras_sigmas(100, 0.002, 80.0))
  sigma_trajectory = sampling.sigma_trajectory(exact_denoiser(), sigmas, "euler_ancestral")
  vp = sde.VPSDE(N=500)

  def score_fn(x, t):
    m, std = vp.marginal_prob(jnp.ones_like(t), t)
    x0 = posterior_mean(MU, SIGMA, flat(x), m, std)
    return (-(flat(x) - m[:, None] * x0) / std[:, None] ** 2).reshape(x.shape)

  sde_trajectory = sde.pc_trajectory(vp, score_fn, "ancestral", "none")
  for trajectory in (sigma_trajectory, sde_trajectory):
    sample = np.asarray(
      jax.jit(lambda rng: editing.sdedit_along(trajectory, rng, jnp.zeros((BATCH, 1, 4, 1)), 1.0))(
        jax.random.key(3)
      )
    )[:, 0, :, 0]
    np.testing.assert_allclose(sample.mean(0), MU, atol=0.04)
    np.testing.assert_allclose(np.cov(sample.T), SIGMA, atol=0.03)
    plain_mean_error, _ = inpainting_errors(trajectory, resample=1)
    mean_error, cov_error = inpainting_errors(trajectory, resample=4)
    assert mean_error < 0.5 * plain_mean_error and mean_error < 0.03, (mean_error, plain_mean_error)
  with pytest.raises(ValueError, match="Unknown σ-space solver"):
    sampling.sigma_trajectory(exact_denoiser(), sigmas, "dpmpp_3m")


def test_the_multistep_trajectories_are_their_samplers_and_inpaint():
  # DPM-Solver++(2M) on the discrete diffusion (λ-uniform grid) and in σ space (EDM's grid), and
  # its SDE variant: from the prior, the walk is the library's sampler (a second formulation)
  rng, x_start = jax.random.key(4), jnp.zeros((BATCH, 1, 4, 1))
  prior = jax.random.normal(jax.random.fold_in(rng, sampling.PRIOR_NOISE), x_start.shape)
  sigmas = np.asarray(sampling.karras_sigmas(40, 0.002, 80.0))
  dpm = sampling.dpm_solver_trajectory(BASE, exact_eps_fn(), 25, clip_denoised=False)
  cases = [
    (
      dpm,
      sampling.dpm_solver_sample(
        BASE, exact_eps_fn(), rng, x_T=prior, num_steps=25, clip_denoised=False
      ),
      2e-4,
    ),
    (
      sampling.sigma_trajectory(exact_denoiser(), sigmas, "dpmpp_2m"),
      sampling.sigma_sample(exact_denoiser(), sigmas[0] * prior, sigmas, "dpmpp_2m"),
      1e-5,
    ),
  ]
  for trajectory, want, tolerance in cases:
    got = jax.jit(lambda rng: editing.sdedit_along(trajectory, rng, x_start, 1.0))(rng)
    np.testing.assert_allclose(got, want, atol=tolerance)
  # inpainting: the last data prediction gets the known part; RePaint's resampling helps
  sde_variant = sampling.sigma_trajectory(exact_denoiser(), sigmas, "dpmpp_2m_sde")
  for trajectory, resample in ((dpm, 8), (sde_variant, 4)):
    plain_mean_error, _ = inpainting_errors(trajectory, resample=1)
    mean_error, cov_error = inpainting_errors(trajectory, resample)
    assert mean_error < 0.5 * plain_mean_error and mean_error < 0.03, (mean_error, plain_mean_error)
    assert cov_error < 0.015, cov_error


def test_the_vdm_trajectory_inpaints_and_samples():
  def eps_fn(z, gamma_t):  # E[ε | z_t] of the correlated Gaussian data
    alpha, sigma = vdm.alpha_sigma(gamma_t)
    x0 = posterior_mean(MU, SIGMA, flat(z), alpha, sigma)
    return ((flat(z) - alpha[:, None] * x0) / sigma[:, None]).reshape(z.shape)

  trajectory = vdm.ancestral_trajectory(vdm.init_schedule(None, "fixed"), eps_fn, 1000)
  sample = np.asarray(
    jax.jit(lambda rng: editing.sdedit_along(trajectory, rng, jnp.zeros((BATCH, 1, 4, 1)), 1.0))(
      jax.random.key(5)
    )
  )[:, 0, :, 0]
  # the mode of p(x | z_0): on the 8-bit grid
  np.testing.assert_allclose(sample * 127.5, np.round(sample * 127.5 + 127.5) - 127.5, atol=1e-3)
  # the data as VDM's decoder sees it: clipped to [-1, 1]
  data = np.clip(np.random.default_rng(0).multivariate_normal(MU, SIGMA, 100_000), -1, 1)
  np.testing.assert_allclose(sample.mean(0), data.mean(0), atol=0.04)
  np.testing.assert_allclose(np.cov(sample.T), np.cov(data.T), atol=0.03)
  plain_mean_error, _ = inpainting_errors(trajectory, resample=1)
  mean_error, cov_error = inpainting_errors(trajectory, resample=4)
  assert mean_error < 0.5 * plain_mean_error and mean_error < 0.03, (mean_error, plain_mean_error)
  assert cov_error < 0.01, cov_error
