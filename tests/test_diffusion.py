"""Forward process, posterior, reverse process and VLB terms against float64 closed forms."""

import chex
from conftest import alphas_cumprod64, make
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ddpm_jax import diffusion, schedules

SHAPE = (4, 3, 2, 3)  # [B, H, W, C]


def _data(rng, shape=SHAPE):
  x0 = rng.uniform(-1, 1, shape).astype(np.float32)
  noise = rng.normal(size=shape).astype(np.float32)
  return x0, noise


def _col(a):
  return np.asarray(a, np.float64).reshape(-1, 1, 1, 1)


def test_posterior_matches_bayes_rule(betas, rng):
  # q(x_{t-1}|x_t, x0) ∝ N(x_t; √α_t x_{t-1}, β_t) · N(x_{t-1}; √ᾱ_{t-1} x0, 1-ᾱ_{t-1}): multiply in
  # float64.
  d = make(betas)
  x0, x_t = _data(rng)
  t = np.array([1, 2, 50, 99])
  a_bar_prev = alphas_cumprod64(betas)[t - 1]
  alpha, beta = 1 - betas[t], betas[t]
  precision = alpha / beta + 1 / (1 - a_bar_prev)
  mean = (
    _col(np.sqrt(alpha) / beta) * x_t + _col(np.sqrt(a_bar_prev) / (1 - a_bar_prev)) * x0
  ) / _col(precision)
  got_mean, got_var, got_log_var = diffusion.q_posterior_mean_variance(d, x0, x_t, jnp.asarray(t))
  np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_var, np.broadcast_to(_col(1 / precision), SHAPE), rtol=1e-5)
  np.testing.assert_allclose(
    got_log_var, np.broadcast_to(_col(-np.log(precision)), SHAPE), rtol=1e-5
  )


def test_posterior_at_t0_is_a_point_mass_at_x0_with_clipped_log_variance(betas, rng):
  d = make(betas)
  x0, x_t = _data(rng)
  t = jnp.zeros(SHAPE[0], jnp.int32)
  mean, var, log_var = diffusion.q_posterior_mean_variance(d, x0, x_t, t)
  np.testing.assert_allclose(mean, x0, atol=1e-6)
  np.testing.assert_array_equal(var, 0.0)
  beta_tilde_1 = betas[1] * (1 - alphas_cumprod64(betas)[0]) / (1 - alphas_cumprod64(betas)[1])
  np.testing.assert_allclose(log_var, np.log(beta_tilde_1), rtol=1e-6)


def test_q_sample_statistics_by_monte_carlo(betas):
  d = make(betas)
  n = 200_000
  x0 = jnp.full((n, 1, 1, 1), 0.6)
  for t_i in (0, 30, 99):
    t = jnp.full((n,), t_i)
    x_t = np.asarray(diffusion.q_sample(d, x0, t, jax.random.normal(jax.random.key(t_i), x0.shape)))
    a_bar = alphas_cumprod64(betas)[t_i]
    std = np.sqrt(1 - a_bar)
    assert x_t.mean() == pytest.approx(np.sqrt(a_bar) * 0.6, abs=5 * std / np.sqrt(n))
    assert x_t.var() == pytest.approx(1 - a_bar, rel=5 * np.sqrt(2 / n))
    mean, var, log_var = diffusion.q_mean_variance(d, x0[:2], t[:2])
    np.testing.assert_allclose(mean, np.sqrt(a_bar) * 0.6, rtol=1e-6)
    np.testing.assert_allclose(var, 1 - a_bar, rtol=1e-5)
    np.testing.assert_allclose(log_var, np.log1p(-a_bar), rtol=1e-5)


def test_parameterisations_round_trip(betas, rng):
  d = make(betas)
  x0, eps = _data(rng)
  t = jnp.array([0, 10, 60, 90])
  x_t = diffusion.q_sample(d, x0, t, eps)
  v = diffusion.get_v(d, x0, eps, t)
  np.testing.assert_allclose(diffusion.predict_x0_from_eps(d, x_t, t, eps), x0, atol=2e-4)
  np.testing.assert_allclose(diffusion.predict_eps_from_x0(d, x_t, t, x0), eps, atol=2e-3)
  np.testing.assert_allclose(diffusion.predict_x0_from_v(d, x_t, t, v), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.predict_eps_from_v(d, x_t, t, v), eps, atol=1e-5)
  # v is the rotation of (ε, x0) by the angle φ with ᾱ = cos² φ: it has the norm of (x0, ε)
  # combined.
  a = alphas_cumprod64(betas)[np.asarray(t)]
  np.testing.assert_allclose(
    np.asarray(v), _col(np.sqrt(a)) * eps - _col(np.sqrt(1 - a)) * x0, atol=1e-6
  )


@pytest.mark.parametrize("clip", [False, True])
def test_eps_x0_v_outputs_give_the_same_reverse_step(betas, rng, clip):
  x0, eps = _data(rng)
  x0 = 1.5 * x0  # partly outside [-1, 1] so clipping matters
  t = jnp.array([0, 5, 50, 99])
  d_eps = make(betas)
  x_t = diffusion.q_sample(d_eps, x0, t, eps)
  outputs = {"eps": eps, "x0": x0, "v": diffusion.get_v(d_eps, x0, eps, t)}
  results = {
    m: diffusion.p_mean_variance(make(betas, mean_type=m), o, x_t, t, clip_denoised=clip)
    for m, o in outputs.items()
  }
  expected_x0 = np.clip(x0, -1, 1) if clip else x0
  expected_mean, _, _ = diffusion.q_posterior_mean_variance(d_eps, expected_x0, x_t, t)
  for m, out in results.items():
    np.testing.assert_allclose(out["pred_x0"], expected_x0, atol=5e-4, err_msg=m)
    np.testing.assert_allclose(out["mean"], expected_mean, atol=5e-4, err_msg=m)


def test_variance_types(betas, rng):
  x_t = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
  t = jnp.array([0, 1, 50, 99])
  a_bar = alphas_cumprod64(betas)
  a_bar_prev = np.append(1.0, a_bar[:-1])
  beta_tilde = betas * (1 - a_bar_prev) / (1 - a_bar)
  tn = np.asarray(t)
  out = diffusion.p_mean_variance(make(betas, var_type="fixed_small"), x_t, x_t, t)
  np.testing.assert_allclose(out["variance"][:, 0, 0, 0], beta_tilde[tn], rtol=1e-5)
  np.testing.assert_allclose(
    out["log_variance"][:, 0, 0, 0], np.log(np.append(beta_tilde[1], beta_tilde[1:]))[tn], rtol=1e-5
  )
  out = diffusion.p_mean_variance(make(betas, var_type="fixed_large"), x_t, x_t, t)
  np.testing.assert_allclose(
    out["variance"][:, 0, 0, 0], np.append(beta_tilde[1], betas[1:])[tn], rtol=1e-5
  )

  var_param = jnp.asarray(rng.uniform(-1, 1, SHAPE), jnp.float32)
  both = jnp.concatenate([x_t, var_param], axis=-1)
  out = diffusion.p_mean_variance(make(betas, var_type="learned"), both, x_t, t)
  np.testing.assert_allclose(out["log_variance"], var_param)
  np.testing.assert_allclose(out["variance"], np.exp(var_param), rtol=1e-6)
  # learned_range (Improved DDPM eq. 15): v = 1 → β, v = -1 → β̃ (clipped), v = 0 → their geometric
  # mean.
  d = make(betas, var_type="learned_range")
  log_beta_tilde = np.log(np.append(beta_tilde[1], beta_tilde[1:]))[tn]
  for v, expected in [
    (1.0, np.log(betas[tn])),
    (-1.0, log_beta_tilde),
    (0.0, (np.log(betas[tn]) + log_beta_tilde) / 2),
  ]:
    out = diffusion.p_mean_variance(d, jnp.concatenate([x_t, jnp.full(SHAPE, v)], -1), x_t, t)
    np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0], expected, rtol=1e-5)


def _oracle_model_fn(d, x0):
  """ε_θ(x_t, t) = the exact ε for this x0: the model of a network that knows the data point."""
  return lambda x_t, t: diffusion.predict_eps_from_x0(d, x_t, t, x0)


def test_vlb_terms_of_an_oracle_model(betas, rng):
  d = make(betas)
  # 8-bit data
  x0 = jnp.asarray(np.round((rng.uniform(-1, 1, SHAPE) + 1) * 127.5) / 127.5 - 1, jnp.float32)
  _, noise = _data(rng)
  t = jnp.array([0, 1, 40, 99])
  x_t = diffusion.q_sample(d, x0, t, noise)
  vb = np.asarray(diffusion.vb_terms_bpd(d, _oracle_model_fn(d, x0)(x_t, t), x0, x_t, t))
  # t > 0: the model's posterior equals the true one, so the KL is 0.
  np.testing.assert_allclose(vb[1:], 0.0, atol=2e-4)
  # t = 0: decoder NLL of x0 under N(x0, β̃_1) over x0's bin, brute force with scipy:
  # -log2(2Φ(1/(255σ)) - 1).
  a_bar = alphas_cumprod64(betas)
  sigma = np.sqrt(betas[1] * (1 - a_bar[0]) / (1 - a_bar[1]))
  x = np.asarray(x0[0])
  interior = 2 * stats.norm.cdf(1 / (255 * sigma)) - 1
  edge = stats.norm.cdf(1 / (255 * sigma))
  bits = -np.log2(np.where(np.abs(x) > 0.999, edge, interior))
  assert vb[0] == pytest.approx(bits.mean(), rel=2e-3)


def test_prior_bpd_closed_form(betas, rng):
  d = make(betas)
  x0, _ = _data(rng)
  a = alphas_cumprod64(betas)[-1]
  kl = 0.5 * (-1 - np.log1p(-a) + (1 - a) + a * x0.astype(np.float64) ** 2)
  np.testing.assert_allclose(
    diffusion.prior_bpd(d, x0), kl.reshape(SHAPE[0], -1).mean(1) / np.log(2), rtol=1e-4, atol=1e-9
  )


def test_calc_bpd_loop_sums_closed_form_kls_of_a_biased_model(rng):
  # A model with a known error: ε_θ = 0.8 ε_true. Each L_t is then a KL between two Gaussians with
  # the same variance β̃_t and means differing by coef1·√(1/ᾱ-1)·0.2ε — computed here in float64
  # from the βs alone.
  betas = schedules.get_beta_schedule("linear", 50)
  d = make(betas)
  x0 = jnp.asarray(
    np.round((rng.uniform(-1, 1, (2, 2, 2, 1)) + 1) * 127.5) / 127.5 - 1, jnp.float32
  )

  def model_fn(x_t, t):
    return 0.8 * diffusion.predict_eps_from_x0(d, x_t, t, x0)

  key = jax.random.key(3)
  out = jax.jit(lambda d, x0, key: diffusion.calc_bpd_loop(d, model_fn, x0, key))(d, x0, key)
  assert (
    out["vb"].shape == (2, 50) and out["mse"].shape == (2, 50) and out["total_bpd"].shape == (2,)
  )
  a_bar = alphas_cumprod64(betas)
  a_bar_prev = np.append(1.0, a_bar[:-1])
  beta_tilde = betas * (1 - a_bar_prev) / (1 - a_bar)
  coef1 = np.sqrt(a_bar_prev) * betas / (1 - a_bar)
  for t in (1, 10, 49):
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, t), x0.shape), np.float64)
    mean_gap = coef1[t] * np.sqrt(1 / a_bar[t] - 1) * 0.2 * eps
    kl_bits = (mean_gap**2 / (2 * beta_tilde[t])).reshape(2, -1).mean(1) / np.log(2)
    np.testing.assert_allclose(out["vb"][:, t], kl_bits, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(
      out["mse"][:, t], ((0.2 * eps) ** 2).reshape(2, -1).mean(1), rtol=2e-3, atol=1e-6
    )
  np.testing.assert_allclose(
    out["total_bpd"], np.asarray(out["vb"]).sum(1) + np.asarray(out["prior_bpd"]), rtol=1e-6
  )
  np.testing.assert_allclose(out["prior_bpd"], diffusion.prior_bpd(d, x0))


def test_training_losses_targets(betas, rng):
  x0, noise = _data(rng)
  t = jnp.array([0, 3, 50, 99])
  for mean_type in ("eps", "x0", "v"):
    d = make(betas, mean_type=mean_type)
    target = {"eps": noise, "x0": x0, "v": diffusion.get_v(d, x0, noise, t)}[mean_type]
    oracle = diffusion.training_losses(d, lambda x_t, t_: target, x0, t, noise)
    np.testing.assert_allclose(oracle["loss"], 0.0, atol=1e-12)
    zero = diffusion.training_losses(d, lambda x_t, t_: jnp.zeros_like(x_t), x0, t, noise)
    np.testing.assert_allclose(
      zero["mse"], (np.asarray(target) ** 2).reshape(4, -1).mean(1), rtol=1e-5
    )
    assert "vb" not in zero


def test_kl_losses_are_the_vlb_term(betas, rng):
  x0, noise = _data(rng)
  t = jnp.array([0, 3, 50, 99])
  model_fn = lambda x_t, t_: 0.5 * x_t
  d = make(betas, loss_type="kl")
  x_t = diffusion.q_sample(d, x0, t, noise)
  vb = diffusion.vb_terms_bpd(d, model_fn(x_t, t), x0, x_t, t)
  np.testing.assert_allclose(diffusion.training_losses(d, model_fn, x0, t, noise)["loss"], vb)
  rescaled = diffusion.training_losses(
    make(betas, loss_type="rescaled_kl"), model_fn, x0, t, noise
  )["loss"]
  np.testing.assert_allclose(rescaled, 100 * np.asarray(vb), rtol=1e-6)


def test_hybrid_loss_stops_the_mean_gradient_in_the_vlb_term(betas, rng):
  d = make(betas, var_type="learned_range", loss_type="hybrid")
  x0, noise = _data(rng)
  t = jnp.array([0, 3, 50, 99])

  def terms(scales):
    mean_scale, var_value = scales
    model_fn = lambda x_t, t_: jnp.concatenate(
      [mean_scale * x_t, jnp.full_like(x_t, var_value)], -1
    )
    return diffusion.training_losses(d, model_fn, x0, t, noise)

  params = (jnp.float32(0.7), jnp.float32(0.1))
  out = terms(params)
  x_t = diffusion.q_sample(d, x0, t, noise)
  vb = diffusion.vb_terms_bpd(
    d, jnp.concatenate([0.7 * x_t, jnp.full_like(x_t, 0.1)], -1), x0, x_t, t
  )
  np.testing.assert_allclose(out["vb"], 1e-3 * 100 * np.asarray(vb), rtol=1e-5)
  np.testing.assert_allclose(out["loss"], np.asarray(out["mse"]) + np.asarray(out["vb"]), rtol=1e-6)
  grad_mean, grad_var = jax.grad(lambda p: jnp.sum(terms(p)["vb"]))(params)
  assert float(grad_mean) == 0.0 and float(grad_var) != 0.0
  grad_mean, grad_var = jax.grad(lambda p: jnp.sum(terms(p)["mse"]))(params)
  assert float(grad_mean) != 0.0 and float(grad_var) == 0.0


def test_every_public_function_compiles_once_for_all_t(betas, rng):
  x0, noise = _data(rng)
  model_fn = lambda x_t, t: jnp.concatenate([0.9 * x_t, 0.0 * x_t], -1)
  d = make(betas, var_type="learned_range", loss_type="hybrid")
  functions = {
    "q_mean_variance": lambda d, t: diffusion.q_mean_variance(d, x0, t),
    "q_sample": lambda d, t: diffusion.q_sample(d, x0, t, noise),
    "q_posterior": lambda d, t: diffusion.q_posterior_mean_variance(d, x0, noise, t),
    "p_mean_variance": lambda d, t: diffusion.p_mean_variance(
      d, model_fn(noise, t), noise, t, clip_denoised=True
    ),
    "vb_terms_bpd": lambda d, t: diffusion.vb_terms_bpd(d, model_fn(noise, t), x0, noise, t),
    "training_losses": lambda d, t: diffusion.training_losses(d, model_fn, x0, t, noise),
    "prior_bpd": lambda d, t: diffusion.prior_bpd(d, x0),
  }
  for name, fn in functions.items():
    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(fn, n=1))
    for t in ([0, 1, 2, 3], [99, 50, 7, 0]):
      jax.block_until_ready(jitted(d, jnp.asarray(t, jnp.int32)))
    # A diffusion with other values but the same structure does not retrace either.
    jax.block_until_ready(
      jitted(
        make(betas * 0.5, var_type="learned_range", loss_type="hybrid"), jnp.zeros(4, jnp.int32)
      )
    )


def test_bad_inputs_raise_before_compiling(betas):
  for kw, match in [
    ({"mean_type": "epsilon"}, "valid: eps, x0, v"),
    ({"var_type": "small"}, "valid: fixed_small, fixed_large, learned, learned_range"),
    ({"loss_type": "l2"}, "valid: mse, hybrid, kl, rescaled_kl"),
  ]:
    with pytest.raises(ValueError, match=match):
      make(betas, **kw)
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    make(np.array([0.1, 1.2]))
  d = make(betas)
  x0 = jnp.zeros(SHAPE)
  with pytest.raises(ValueError, match="t must have shape"):
    jax.jit(lambda d, t: diffusion.q_sample(d, x0, t, x0))(d, jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="model output must have shape"):
    diffusion.p_mean_variance(make(betas, var_type="learned"), x0, x0, jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="needs a learned var_type"):
    diffusion.training_losses(
      make(betas, loss_type="hybrid"), lambda x, t: x, x0, jnp.zeros(4, jnp.int32), x0
    )


def test_mse_with_a_learned_variance_adds_the_unscaled_vlb_term(betas):
  """guided-diffusion's LossType.MSE with a learned Σ: L_simple + L_t; 'hybrid' (its RESCALED_MSE)
  weighs L_t by T/1000."""
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, SHAPE), jnp.float32)
  noise = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
  t = jnp.asarray([0, 5, 50, 99][: SHAPE[0]], jnp.int32)
  output = jnp.asarray(rng.normal(size=SHAPE[:-1] + (2 * SHAPE[-1],)), jnp.float32)
  model_fn = lambda x, s: output
  terms = {
    loss: diffusion.training_losses(
      diffusion.GaussianDiffusion.from_betas(betas, "eps", "learned_range", loss), model_fn, x0, t,
      noise,
    )
    for loss in ("mse", "hybrid")
  }  # fmt: skip
  weight = diffusion.HYBRID_VB_WEIGHT * len(betas)
  np.testing.assert_allclose(terms["mse"]["vb"] * weight, terms["hybrid"]["vb"], rtol=1e-6)
  np.testing.assert_allclose(terms["mse"]["loss"], terms["mse"]["mse"] + terms["mse"]["vb"])
  assert np.all(np.asarray(terms["mse"]["vb"]) > 0)


def test_the_continuous_vlb_of_the_exact_reverse_process_is_the_data_density():
  """Data x0 ~ N(0, I) stay N(0, I) under the forward process, whose exact reverse steps are
  N(√α_t x_t, β_t): with that model (ε̂ = √(1 - ᾱ_t) x_t, log σ² = log β_t) the VLB with the
  continuous decoder is -log₂ N(x0; 0, I) per dimension (its KL(q(x_{1:T} | x0) ‖ p) is 0), up to
  the one-sample noise of each term (the mean over examples within 4 standard errors); the 8-bit
  decoder's is not a density of such data."""
  d = diffusion.GaussianDiffusion.from_betas(
    schedules.get_beta_schedule("linear", 1000), var_type="learned", decoder="continuous"
  )
  key = jax.random.key(0)
  x0 = jax.random.normal(jax.random.key(1), (256, 8, 8, 2))

  def model_fn(x_t, t):
    eps = diffusion.extract(d.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
    log_variance = diffusion.extract(d.log_betas, t, x_t.ndim) * jnp.ones_like(x_t)
    return jnp.concatenate([eps, log_variance], axis=-1)

  total = jax.jit(lambda d: diffusion.calc_bpd_loop(d, model_fn, x0, key)["total_bpd"])
  nll = -jnp.mean(stats.norm.logpdf(np.asarray(x0)), axis=(1, 2, 3)) / np.log(2.0)
  gap = np.asarray(total(d) - nll)  # mean 0: the estimate's noise only
  standard_error = gap.std() / np.sqrt(gap.size)
  assert abs(gap.mean()) < 4 * standard_error and standard_error < 0.01, (gap.mean(), gap.std())
  discretized_gap = np.asarray(total(d.replace(decoder="discretized")) - nll)
  assert abs(discretized_gap.mean()) > 10 * standard_error, discretized_gap.mean()
