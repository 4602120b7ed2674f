"""VDM: the continuous loss is the limit of the discrete VLB (checked against GaussianDiffusion's KL
terms), the learned schedule is monotone and its shape gets the variance gradient, low-discrepancy t
lowers the variance, and ancestral sampling with the exact ε of Gaussian data reproduces it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, losses, vdm

MU, S = 0.2, 0.3  # Gaussian data N(MU, S²): E[ε | z_t] is known in closed form


def exact_eps(z, gamma_t):
  alpha, sigma = vdm.alpha_sigma(gamma_t)
  alpha, sigma = alpha[:, None], sigma[:, None]
  return sigma / (alpha**2 * S**2 + sigma**2) * (z - alpha * MU)


# an imperfect denoiser, so that the losses are not all at their minimum
def biased_eps(z, gamma_t):
  return 1.1 * exact_eps(z, gamma_t) + 0.05 * jnp.tanh(z)


FIXED = vdm.init_schedule(None, "fixed")


def _diffusion_loss_at(t, x, noise, num_steps=0):
  return vdm.vlb_terms(FIXED, biased_eps, x, t, noise, noise, num_steps=num_steps)["diffusion"]


def test_t_step_loss_is_the_sum_of_gaussian_diffusion_kl_terms():
  """VDM's T-step loss at t = i/T equals T · KL(q(z_s | z_t, x) ‖ p(z_s | z_t)) of a
  GaussianDiffusion on the same grid (ᾱ_k = α²(k/T), k = 0..T, fixed_small variance): a second,
  independent formulation."""
  T = 10
  alphas_cumprod = 1.0 / (1.0 + np.exp(-13.3 + 18.3 * np.arange(T + 1) / T))  # sigmoid(-γ), float64
  betas = 1.0 - alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])
  d = diffusion.GaussianDiffusion.from_betas(np.asarray(betas), "eps", "fixed_small", "kl")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(MU, S, (4, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  for i in range(1, T + 1):
    t = jnp.full((4,), i / T - 0.5 / T)  # moved up to i/T
    vdm_loss = _diffusion_loss_at(t, x, noise, num_steps=T)
    k = jnp.full((4,), i, jnp.int32)
    z_t = diffusion.q_sample(d, x, k, noise)
    gamma_t = vdm.gamma(FIXED, jnp.full((4,), i / T))
    np.testing.assert_allclose(z_t, vdm.q_sample(gamma_t, x, noise), rtol=1e-4, atol=1e-5)
    true_mean, _, true_logvar = diffusion.q_posterior_mean_variance(d, x, z_t, k)
    out = diffusion.p_mean_variance(d, biased_eps(z_t, gamma_t), z_t, k)
    kl = losses.normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"]).sum(-1)
    np.testing.assert_allclose(vdm_loss, T * kl, rtol=2e-3, err_msg=f"i={i}")


@pytest.mark.slow
def test_continuous_loss_is_the_limit_of_the_t_step_loss():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(MU, S, (3, 2)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)

  # the mean of the per-example loss over the times ts, all at once
  def expectation(ts, num_steps=0):
    per_t = jax.vmap(lambda t: _diffusion_loss_at(jnp.full((3,), t), x, noise, num_steps))(
      jnp.asarray(ts)
    )
    return np.asarray(per_t).mean(axis=0)

  # midpoint rule: the integrand is smooth in t
  continuous = expectation((np.arange(4000) + 0.5) / 4000)
  errors = [
    np.max(np.abs(expectation((np.arange(T) + 0.5) / T, T) - continuous) / continuous)
    for T in (10, 100, 1000)
  ]  # E over i ∈ {1..T} exactly
  # L_T - L_∞ = O(1/T): the gap shrinks about tenfold per tenfold T.
  assert errors[0] / errors[1] > 5 and errors[1] / errors[2] > 5 and errors[2] < 0.02, errors


def _train_schedule_steps(num_steps=20):
  import optax

  params = vdm.init_schedule(jax.random.key(0), "learned", n_features=64)
  optimizer = optax.adam(0.05)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    k1, k2, k3 = jax.random.split(rng, 3)
    x = MU + S * jax.random.normal(k1, (64, 2))
    loss = lambda p: jnp.mean(
      vdm.vlb_terms(
        p,
        biased_eps,
        x,
        vdm.time_samples(k2, 64),
        jax.random.normal(k3, x.shape),
        jax.random.normal(k3, x.shape),
      )["total"]
    )
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for i in range(num_steps):
    params, opt_state = step(params, opt_state, jax.random.key(i))
  return params


def test_learned_schedule_stays_monotone_with_its_endpoints():
  params = _train_schedule_steps()
  t = jnp.linspace(0.0, 1.0, 1001)
  g = np.asarray(vdm.gamma(params, t))
  assert np.all(np.diff(g) > 0)
  np.testing.assert_allclose(g[[0, -1]], [params["gamma_0"], params["gamma_1"]], rtol=1e-5)
  assert not np.allclose(g, np.linspace(g[0], g[-1], 1001), atol=1e-2)  # it did learn a shape


@pytest.mark.slow
def test_schedule_shape_gets_the_gradient_of_the_second_moment():
  params = vdm.init_schedule(jax.random.key(3), "learned", n_features=16)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(MU, S, (8, 2)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)
  t = vdm.time_samples(jax.random.key(0), 8)
  terms = lambda p, variance: vdm.vlb_terms(
    p, biased_eps, x, t, noise, noise, minimize_schedule_variance=variance
  )
  ours = jax.grad(lambda p: jnp.mean(terms(p, True)["diffusion"]))(params)
  second_moment = jax.grad(lambda p: jnp.mean(terms(p, False)["diffusion"] ** 2))(params)
  first_moment = jax.grad(lambda p: jnp.mean(terms(p, False)["diffusion"]))(params)
  for k in params["net"]:
    np.testing.assert_allclose(ours["net"][k], second_moment["net"][k], rtol=1e-4, atol=1e-6)
  for k in ("gamma_0", "gamma_1"):
    np.testing.assert_allclose(ours[k], first_moment[k], rtol=1e-5)


def test_low_discrepancy_times_lower_the_variance_of_the_batch_loss():
  @functools.partial(jax.jit, static_argnums=1)
  def batch_loss(rng, antithetic):
    k1, k2, k3 = jax.random.split(rng, 3)
    x = MU + S * jax.random.normal(k1, (32, 64))
    t = vdm.time_samples(k2, 32, antithetic)
    return jnp.mean(_diffusion_loss_at(t, x, jax.random.normal(k3, x.shape)))

  iid = np.array([batch_loss(jax.random.key(i), False) for i in range(300)])
  low = np.array([batch_loss(jax.random.key(i), True) for i in range(300)])
  assert abs(iid.mean() - low.mean()) < 3 * iid.std() / np.sqrt(300)  # same expectation
  assert low.var() < 0.5 * iid.var(), (low.var(), iid.var())
  t = np.asarray(vdm.time_samples(jax.random.key(0), 8))
  np.testing.assert_allclose(np.sort(np.diff(np.sort(t))), np.full(7, 1 / 8), atol=1e-6)


def test_ancestral_sampling_with_the_exact_eps_reproduces_gaussian_data():
  x = vdm.sample(FIXED, exact_eps, jax.random.key(0), (20000, 1), num_steps=1000)
  assert x.min() >= -1 and x.max() <= 1
  # The target is the data on the 8-bit grid: N(0.2, 0.3²) rounded to the grid and clipped to [-1,
  # 1] has std 0.2989 (its upper tail is cut at 2.7σ). Monte-Carlo error of the std: 0.3/√40000 =
  # 0.0015.
  np.testing.assert_allclose(np.asarray(x).mean(), MU, atol=0.008)
  np.testing.assert_allclose(np.asarray(x).std(), 0.2989, atol=0.005)
  np.testing.assert_allclose(
    np.asarray(x) * 127.5, np.round(np.asarray(x) * 127.5 + 127.5) - 127.5, atol=1e-3
  )


def test_prior_and_reconstruction_terms():
  x = jnp.asarray([[-1.0, 0.0, 1.0]])
  g1 = jnp.asarray(5.0)
  a2, s2 = jax.nn.sigmoid(-5.0), jax.nn.sigmoid(5.0)
  expected = 0.5 * np.sum(s2 + a2 * np.asarray(x) ** 2 - np.log(s2) - 1)
  np.testing.assert_allclose(vdm.prior_loss(g1, x), [expected], rtol=1e-5)
  # With SNR_0 = e^13.3, σ_0/α_0 is a third of half a bin: nearly all mass on the right bin (12
  # pixels < 0.05 nats); at SNR_0 = e^-13 the decoder is uniform over the 256 values.
  x = (jnp.arange(0, 256, 23) / 127.5 - 1.0)[None]  # 12 pixel values on the 8-bit grid
  noise = jax.random.normal(jax.random.key(0), x.shape)
  assert float(vdm.reconstruction_loss(jnp.asarray(-13.3), x, noise)[0]) < 0.05
  np.testing.assert_allclose(
    vdm.reconstruction_loss(jnp.asarray(13.0), x, noise), [12 * np.log(256)], rtol=1e-3
  )


@pytest.mark.slow  # (the fast tier's 2 minutes: seconds of training or sampling)
def test_vdm_takes_cross_attention_contexts():
  """model.context_dim in the VDM family: contexts in the VLB and in ancestral sampling, whose step
  is the library's with the context-conditioned network written out."""
  from configs import default
  from ddpm_jax import families
  from ddpm_jax.families import Cond, config_validation

  config = default.get_config("vdm")
  config.model.update(ch=64, ch_mult=(1,), attn_resolutions=(), context_dim=8, conv_impl="xla")
  config.data.context_key, config.vdm.n_features, config.sampling.num_steps = "caption", 16, 10
  config_validation.validate_config(config)
  family = families.get_family(config)
  assert family.conditions == ("context",)
  params = family.init_params(jax.random.key(0))
  unet = jax.tree_util.tree_map(
    lambda p: p if jnp.any(p != 0) else 0.1 * jnp.ones_like(p), params["unet"]
  )
  params = {**params, "unet": unet}
  context = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)), jnp.float32)
  batch = {"image": jnp.zeros((2, 8, 8, 1)), "context": context}
  draws = family.draw(families.step_keys(jax.random.key(2)), batch, None)
  assert np.all(np.isfinite(family.loss(params, batch, draws, None)))
  trajectory = family.make_trajectory()(params, Cond(context=context))
  scaled = lambda gamma: (
    1000.0 * (gamma - config.vdm.gamma_min) / (config.vdm.gamma_max - config.vdm.gamma_min)
  )
  eps = lambda c: lambda z, gamma: family.model.apply(params["unet"], z, scaled(gamma), None, c)
  manual = vdm.ancestral_trajectory(params["schedule"], eps(context), 10)
  plain = vdm.ancestral_trajectory(params["schedule"], eps(jnp.zeros_like(context)), 10)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 1)), jnp.float32)
  step = lambda traj: traj.step(x, None, 2, jax.random.key(4))[0]
  np.testing.assert_allclose(step(trajectory), step(manual), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(step(plain)) - np.asarray(step(trajectory)))) > 1e-4
