"""Score SDEs and annealed Langevin dynamics driven by exact scores of Gaussian (mixture) data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import losses, sampling, schedules, sde
from helpers import with_random_zero_layers

MU, S = 0.3, 0.5  # data x0 ~ N(μ, s²) in every dimension
SHAPE = (2000, 2, 2, 1)


def gaussian_score(s):
  """∇ log p_t for Gaussian data: p_t = N(m(t) μ, m(t)² s² + std(t)²) with (m μ, std) =
  marginal_prob(μ, t)."""

  def score_fn(x, t):
    mean, std = s.marginal_prob(jnp.full(x.shape, MU), t)
    scale = (mean / MU) if MU else 1.0
    var = (scale * S) ** 2 + losses.expand_to(std, x) ** 2
    return -(x - mean) / var

  return score_fn


def test_vp_discretisation_is_the_ddpm_schedule():
  s = sde.VPSDE()
  np.testing.assert_allclose(
    s.discrete_betas, schedules.get_beta_schedule("linear", 1000), rtol=1e-12
  )
  x = jnp.ones((3, 2))
  t = jnp.array([0.0, 0.5, 1.0])
  f, g = s.discretize(x, t)
  betas = schedules.get_beta_schedule("linear", 1000)[[0, 499, 999]]
  np.testing.assert_allclose(g, np.sqrt(betas), rtol=1e-6)
  np.testing.assert_allclose(f[:, 0], np.sqrt(1 - betas) - 1, rtol=1e-5)


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.subVPSDE(), sde.VESDE()], ids=["vp", "subvp", "ve"])
def test_marginals_solve_the_sde_moment_equations(s):
  # For a linear SDE, d mean/dt = f-coefficient · mean and d var/dt = 2 f-coeff · var + g²: check
  # the closed forms of marginal_prob against these ODEs by finite differences.
  t = jnp.array([0.1, 0.4, 0.8])
  x0 = jnp.ones((3, 1))
  h = 1e-3
  mean = lambda t: s.marginal_prob(x0, t)[0][:, 0]
  var = lambda t: s.marginal_prob(x0, t)[1] ** 2 + 0.0
  drift_coeff = s.sde(x0, t)[0][:, 0]  # f(x, t) = drift_coeff · x at x = 1
  g2 = s.sde(x0, t)[1] ** 2
  np.testing.assert_allclose(
    (mean(t + h) - mean(t - h)) / (2 * h), drift_coeff * mean(t), rtol=2e-3
  )
  np.testing.assert_allclose(
    (var(t + h) - var(t - h)) / (2 * h), 2 * drift_coeff * var(t) + g2, rtol=2e-3
  )


@pytest.mark.parametrize(
  "s,predictor",
  [
    (sde.VPSDE(), "reverse_diffusion"),
    (sde.subVPSDE(), "euler_maruyama"),
    (sde.VESDE(), "reverse_diffusion"),
  ],
  ids=["vp", "subvp", "ve"],
)
def test_pc_sampling_with_exact_score_reproduces_gaussian_data(s, predictor):
  x = jax.jit(
    lambda rng: sde.pc_sample(s, gaussian_score(s), rng, SHAPE, predictor=predictor, snr=0.16)
  )(jax.random.key(0))
  x = np.asarray(x, np.float64).ravel()
  assert x.mean() == pytest.approx(MU, abs=5 * S / np.sqrt(x.size) + 0.01)
  assert x.var() == pytest.approx(S**2, rel=5 * np.sqrt(2 / x.size) + 0.03)


def test_prior_logp_is_the_prior_density():
  for s, scale in ((sde.VPSDE(), 1.0), (sde.VESDE(), 50.0)):
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 2)) * scale, jnp.float32)
    expected = np.sum(
      -0.5 * np.log(2 * np.pi * scale**2) - np.asarray(z, np.float64) ** 2 / (2 * scale**2),
      axis=(1, 2),
    )
    np.testing.assert_allclose(s.prior_logp(z), expected, rtol=1e-5)


def test_annealed_langevin_recovers_mixture_weights():
  # 1-D mixture 0.7 N(-2, 0.2²) + 0.3 N(2, 0.2²); the exact score of the data convolved with N(0,
  # σ²).
  weights, means, std = jnp.array([0.7, 0.3]), jnp.array([-2.0, 2.0]), 0.2

  def score_fn(x, sigma):
    var = std**2 + losses.expand_to(sigma, x)[..., None] ** 2  # [B, 1, 1]
    log_r = jnp.log(weights) - 0.5 * (x[..., None] - means) ** 2 / var - 0.5 * jnp.log(var)
    r = jax.nn.softmax(log_r, axis=-1)
    return jnp.sum(r * (-(x[..., None] - means) / var), axis=-1)

  sigmas = np.exp(np.linspace(np.log(20.0), np.log(0.05), 30))
  x = jax.jit(
    lambda rng: sde.annealed_langevin_sample(
      sigmas, score_fn, rng, (4000, 1), n_steps_each=100, step_lr=2e-3
    )
  )(jax.random.key(1))
  x = np.asarray(x).ravel()
  assert np.mean(x > 0) == pytest.approx(0.3, abs=0.04)
  assert np.std(x[x > 0]) == pytest.approx(std, rel=0.15)


def test_ode_sampler_reproduces_gaussian_data():
  s = sde.VPSDE()
  x, nfe = jax.jit(lambda rng: sde.ode_sample(s, gaussian_score(s), rng, SHAPE))(jax.random.key(2))
  x = np.asarray(x, np.float64).ravel()
  assert x.mean() == pytest.approx(MU, abs=5 * S / np.sqrt(x.size) + 0.01)
  assert x.var() == pytest.approx(S**2, rel=5 * np.sqrt(2 / x.size) + 0.03)
  assert 10 < int(nfe) < 2000


@pytest.mark.slow
@pytest.mark.parametrize("s,tol", [(sde.VPSDE(), 1e-2), (sde.VESDE(), 2e-2)], ids=["vp", "ve"])
def test_ode_likelihood_of_gaussian_data_matches_the_density(s, tol):
  x = jnp.asarray(MU + S * np.random.default_rng(3).normal(size=(16, 2, 1, 1)), jnp.float32)
  # p_eps is N(m μ, m² s² + std²) at t = eps = 1e-5: essentially the data density.
  mean, std = s.marginal_prob(jnp.full(x.shape, MU), jnp.full((16,), 1e-5))
  var = (np.asarray(mean)[:, 0, 0, 0] / MU * S) ** 2 + np.asarray(std) ** 2
  expected = np.sum(
    -0.5 * np.log(2 * np.pi * var)[:, None]
    - (np.asarray(x).reshape(16, -1) - np.asarray(mean).reshape(16, -1)) ** 2 / (2 * var[:, None]),
    axis=1,
  )
  exact = sde.ode_log_likelihood(s, gaussian_score(s), x, jax.random.key(4), hutchinson=False)
  # The prior N(0, I) (VP) / N(0, σ_max² I) (VE) is not exactly p_T (VP keeps e^{-∫β/2} ≈ 0.0067 of
  # the data scale at T = 1; VE's p_T has mean μ), and the float32 solver over VE's σ from 0.01 to
  # 50, leave ~1e-2 nats.
  np.testing.assert_allclose(exact, expected, atol=tol)
  # Hutchinson's estimate is unbiased: averaged over probes it agrees too.
  estimates = np.stack(
    [
      np.asarray(sde.ode_log_likelihood(s, gaussian_score(s), x, jax.random.key(k)))
      for k in range(4)
    ]
  )
  assert abs(estimates.mean() - expected.mean()) < 0.05


@pytest.mark.slow
def test_bits_per_dim_bounds_the_discrete_likelihood_of_8_bit_data():
  from scipy import stats

  s = sde.VPSDE()
  rng = np.random.default_rng(5)
  y = np.clip(MU + S * rng.normal(size=(32, 2, 1, 1)), -0.99, 0.99)
  images = np.floor((y + 1) / 2 * 256).astype(np.uint8)
  bpd = np.asarray(
    sde.bits_per_dim(s, gaussian_score(s), jnp.asarray(images), jax.random.key(6), hutchinson=False)
  )
  # Brute force: each pixel's bin [k/128 - 1, (k+1)/128 - 1) in model space under the data density
  # N(μ, s²).
  lower = images.astype(np.float64) / 128 - 1
  bin_prob = stats.norm.cdf(lower + 1 / 128, MU, S) - stats.norm.cdf(lower, MU, S)
  discrete_bits = -np.log2(bin_prob).reshape(32, -1).mean(axis=1)
  # Dequantisation gives an upper bound (Jensen), tight for a density that is smooth at the bin
  # scale; one uniform draw per example makes each estimate noisy, so compare means.
  assert bpd.mean() >= discrete_bits.mean() - 0.02
  assert bpd.mean() == pytest.approx(discrete_bits.mean(), abs=0.05)


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.subVPSDE(), sde.VESDE()], ids=["vp", "subvp", "ve"])
def test_dsm_loss_of_the_exact_score_has_its_closed_form_minimum(s):
  # For Gaussian data and the exact score, E‖std·s + z‖² per dimension is m²s²/(m²s² + std²) (m, std
  # of the marginal at t); any other score does worse.
  n, t_value = 20_000, 0.3
  x0 = jnp.asarray(MU + S * np.random.default_rng(7).normal(size=(n, 2)), jnp.float32)
  t = jnp.full((n,), t_value)
  mean, std = s.marginal_prob(jnp.full((1, 1), MU), jnp.full((1,), t_value))
  m2s2 = (float(mean[0, 0]) / MU * S) ** 2
  expected = 2 * m2s2 / (m2s2 + float(std[0]) ** 2)
  score = gaussian_score(s)
  z = jax.random.normal(jax.random.key(8), x0.shape)
  loss = np.asarray(sde.dsm_loss(s, score, x0, t, z))
  assert loss.mean() == pytest.approx(expected, rel=0.03)
  for scale in (0.8, 1.2):  # common random numbers: the same z and t
    worse = np.asarray(sde.dsm_loss(s, lambda x, t: scale * score(x, t), x0, t, z))
    assert worse.mean() > loss.mean()
  weighted = np.asarray(sde.dsm_loss(s, score, x0, t, z, likelihood_weighting=True))
  g2 = float(s.sde(x0[:1], t[:1])[1][0]) ** 2
  np.testing.assert_allclose(weighted, loss * g2 / float(std[0]) ** 2, rtol=1e-4)


@pytest.mark.parametrize("conditioning", ["t", "sigma"])
def test_model_score_fn_conditions_on_t_or_log_sigma_and_scales_by_std(conditioning):
  s = sde.VESDE(sigma_min=0.01, sigma_max=50.0, N=100)
  t = jnp.array([1e-3, 0.5, 1.0])
  x = jnp.ones((3, 2))
  seen = {}

  def model_fn(x, label):
    seen["label"] = label
    return jnp.full_like(x, 2.0)  # ε̂ = 2

  score = sde.model_score_fn(s, model_fn, conditioning)(x, t)
  sigma = 0.01 * 5000.0 ** np.asarray(t)
  expected_label = np.asarray(t) * 99 if conditioning == "t" else np.log(sigma)
  np.testing.assert_allclose(seen["label"], expected_label, rtol=1e-5)
  np.testing.assert_allclose(score, -2.0 / sigma[:, None] * np.ones((3, 2)), rtol=1e-5)
  with pytest.raises(ValueError, match="conditioning"):
    sde.model_score_fn(s, model_fn, "sigma2")


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.subVPSDE(), sde.VESDE()], ids=["vp", "subvp", "ve"])
def test_sigma_denoiser_of_the_exact_score_is_the_posterior_mean(s):
  t = jnp.linspace(0.05, 1.0, 7)
  sigma = sde.sigma_of_t(s, t)
  np.testing.assert_allclose(sde.t_of_sigma(s, sigma), t, rtol=1e-4)
  mean, std = s.marginal_prob(jnp.ones_like(t), t)
  np.testing.assert_allclose(sigma, std / mean, rtol=1e-5)
  # x = x0 + σ ε with x0 ~ N(μ, s²): E[x0 | x] = μ + s²/(s² + σ²) (x - μ)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(7, 2, 2, 1)) * 3.0, jnp.float32)
  expected = MU + S**2 / (S**2 + losses.expand_to(sigma, x) ** 2) * (x - MU)
  denoised = sde.sigma_denoiser(s, gaussian_score(s))(x, sigma)
  np.testing.assert_allclose(denoised, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.VESDE()], ids=["vp", "ve"])
def test_heun_on_the_sdes_sigma_grid_follows_the_exact_probability_flow(s):
  # Gaussian data's ODE keeps (x_σ - μ)/√(s² + σ²): x_0 = μ + s (σ_0 z - μ)/√(s² + σ_0²)
  z = jax.random.normal(jax.random.key(5), SHAPE)
  errors = []
  for num_steps in (25, 100):
    sigmas = sampling.karras_sigmas(
      num_steps, float(sde.sigma_of_t(s, 1e-3)), float(sde.sigma_of_t(s, 1.0))
    )
    x0 = sampling.sigma_sample(
      sde.sigma_denoiser(s, gaussian_score(s)), sigmas[0] * z, sigmas, "heun"
    )
    exact = MU + S * (sigmas[0] * z - MU) / np.sqrt(S**2 + sigmas[0] ** 2)
    errors.append(np.max(np.abs(np.asarray(x0) - exact)))
  assert errors[1] < 0.01 * S and errors[1] < errors[0] / 4, errors  # second order


def test_the_langevin_step_size_takes_the_whole_batchs_norms_when_sampled_one_at_a_time():
  """score_sde's LangevinCorrector sets ε = 2α (snr ‖z‖/‖∇ log p‖)² from the norms' means over the
  batch; sampled one example at a time (vmapped over sde.SAMPLE_AXIS, as jobs/sample does) the
  means are still the whole batch's, written out here."""
  s = sde.VESDE(0.01, 50.0, N=100)
  score_fn = gaussian_score(s)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 1, 2, 2, 1)) * 3, jnp.float32)
  t = jnp.full((1,), 0.4)
  keys = jax.random.split(jax.random.key(0), 4)
  one = lambda x_b, key: sde.langevin_corrector(s, score_fn, x_b, t, key, 0.16, 1)[1]
  got = jax.vmap(one, axis_name=sde.SAMPLE_AXIS)(x, keys)
  noise_norms = [
    jnp.linalg.norm(jax.random.normal(jax.random.fold_in(k, 0), x.shape[1:])) for k in keys
  ]
  grads = jax.vmap(lambda x_b: score_fn(x_b, t))(x)
  step = 2 * (0.16 * np.mean(noise_norms) / np.mean([jnp.linalg.norm(g) for g in grads])) ** 2
  np.testing.assert_allclose(got, x + step * grads, rtol=1e-5)
  # one example alone (no axis): its own norms
  alone = one(x[0], keys[0])
  own = 2 * (0.16 * noise_norms[0] / jnp.linalg.norm(grads[0])) ** 2
  np.testing.assert_allclose(alone, x[0] + own * grads[0], rtol=1e-5)


@pytest.mark.slow  # (the fast tier's 2 minutes: seconds of training or sampling)
def test_a_class_conditional_score_sde_trains_and_samples_guided_as_written_out():
  """A class-conditional score SDE: labels (with the null label at training.label_dropout) in the
  loss; sampling given labels guided without a classifier is predictor-corrector sampling of the
  score of (1 + w) out(x, y) - w out(x, ∅), written out with the library's sampler."""
  from configs import default
  from ddpm_jax import families
  from ddpm_jax.families import Cond, config_validation

  config = default.get_config("score_sde")
  # ch 64: GroupNorm(32) groups of two channels keep the embedding's shift (of one: removed)
  config.model.update(ch=64, ch_mult=(1,), attn_resolutions=(), num_classes=10, conv_impl="xla")
  config.sde.type, config.sde.num_scales = "vp", 50
  config.sampling.num_steps, config.sampling.guidance_scale = 25, 1.0
  config_validation.validate_config(config)
  family = families.get_family(config)
  assert family.conditions == ("label",) and family.sample_controls == ("guidance_scale",)
  params = family.init_params(jax.random.key(0))
  params = with_random_zero_layers(params, 5, 0.1)
  batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.array([0, 1, 2, 1])}
  keys = families.step_keys(jax.random.key(2))
  draws = family.draw(keys, batch, None)
  assert draws["labels"].shape == (4,)
  assert np.all(np.isfinite(family.loss(params, batch, draws, None)))
  labels, w = jnp.array([2, 0]), 2.5
  samples = jax.jit(family.make_sampler(2))(
    params, jax.random.key(1), Cond(label=labels), None, {"guidance_scale": w}
  )
  assert samples.shape == (2, 8, 8, 1)
  # its predictor-corrector step at t = T (moderate scores) is the library's on the guided score
  trajectory = family.make_trajectory()(params, Cond(label=labels), None, {"guidance_scale": w})
  # the network trained on N = 50 (its input t·(N - 1)), sampled on N = 25 steps
  trained, s = (sde.VPSDE(config.sde.beta_min, config.sde.beta_max, N=n) for n in (50, 25))
  out = lambda y: lambda x, t: family.model.apply(params, x, t, y)
  guided = lambda x, t: (1 + w) * out(labels)(x, t) - w * out(None)(x, t)
  manual = sde.pc_trajectory(s, sde.model_score_fn(trained, guided, "t"))
  unguided = sde.pc_trajectory(s, sde.model_score_fn(trained, out(labels), "t"))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 1)), jnp.float32)
  step = lambda traj: traj.step(x, None, 0, jax.random.key(4))[0]
  got, want = step(trajectory), step(manual)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(step(unguided)) - np.asarray(got))) > 1e-2
  # sampling.guidance_rescale acts here too, on the ε-like output
  config.sampling.guidance_rescale = 0.7
  rescaled_family = families.get_family(config)
  trajectory = rescaled_family.make_trajectory()(
    params, Cond(label=labels), None, {"guidance_scale": w}
  )
  rescaled = sampling.classifier_free_guidance(out(labels), out(None), w, 1, 0.7)
  manual = sde.pc_trajectory(s, sde.model_score_fn(trained, rescaled, "t"))
  np.testing.assert_allclose(step(trajectory), step(manual), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(step(trajectory)) - np.asarray(got))) > 1e-3


def test_a_context_conditional_score_sde_guides_towards_its_contexts():
  from configs import default
  from ddpm_jax import families
  from ddpm_jax.families import Cond, config_validation

  config = default.get_config("score_sde")
  config.model.update(ch=64, ch_mult=(1,), attn_resolutions=(), context_dim=8, conv_impl="xla")
  config.data.context_key = "caption"
  config.sde.type, config.sde.num_scales = "vp", 50
  config.sampling.num_steps, config.sampling.guidance_scale = 25, 1.0
  config_validation.validate_config(config)
  family = families.get_family(config)
  assert family.conditions == ("context",)
  params = family.init_params(jax.random.key(0))
  params = with_random_zero_layers(params, 5, 0.1)
  context = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)), jnp.float32)
  batch = {"image": jnp.zeros((2, 8, 8, 1)), "context": context}
  draws = family.draw(families.step_keys(jax.random.key(2)), batch, None)
  assert np.all(np.isfinite(family.loss(params, batch, draws, None)))
  w = 2.0
  trajectory = family.make_trajectory()(params, Cond(context=context), None, {"guidance_scale": w})
  trained, s = (sde.VPSDE(config.sde.beta_min, config.sde.beta_max, N=n) for n in (50, 25))
  out = lambda c: lambda x, t: family.model.apply(params, x, t, None, c)
  guided = lambda x, t: (1 + w) * out(context)(x, t) - w * out(jnp.zeros_like(context))(x, t)
  manual = sde.pc_trajectory(s, sde.model_score_fn(trained, guided, "t"))
  plain = sde.pc_trajectory(s, sde.model_score_fn(trained, out(context), "t"))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 1)), jnp.float32)
  step = lambda traj: traj.step(x, None, 0, jax.random.key(4))[0]
  np.testing.assert_allclose(step(trajectory), step(manual), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(step(plain)) - np.asarray(step(trajectory)))) > 1e-3
