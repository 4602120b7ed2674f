"""σ-space samplers (EDM / k-diffusion): with the exact denoiser of Gaussian data they equal
k-diffusion's own sampling functions step for step (and EDM's Algorithm 2 written out in float64),
reproduce the data distribution, and compile once per grid length; discrete models' denoisers give
the exact posterior mean from the exact ε / x0 / v."""

import importlib.util
import sys
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, sampling, schedules

SHAPE = (4, 3, 3, 2)
MU = np.linspace(-0.5, 0.5, 18).reshape(3, 3, 2)
STD = np.linspace(0.2, 0.9, 18).reshape(3, 3, 2)


def exact_denoiser(x, sigma):
  """E[y | y + σ n = x] for y ~ N(MU, diag STD²): MU + STD²/(STD² + σ²) (x - MU)."""
  sigma = sigma.reshape((-1, 1, 1, 1))
  return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def jax_noises(rng, num_steps):
  return [
    np.asarray(jax.random.normal(jax.random.fold_in(rng, i), SHAPE)) for i in range(num_steps)
  ]


def load_k_diffusion_sampling():
  """k_diffusion/sampling.py on its own (k-diffusion is installed without its dependencies; the
  functions compared need only torch): its package, utils and the ODE/SDE libraries stubbed."""
  import scipy.integrate  # noqa: F401  (imported outside the patched sys.modules, which
  import torch  # noqa: F401  drops whatever was first imported inside it)
  import tqdm.auto  # noqa: F401

  spec = importlib.util.find_spec("k_diffusion")
  if spec is None:
    pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
  package = types.ModuleType("k_diffusion")
  package.__path__ = list(spec.submodule_search_locations)
  utils = types.ModuleType("k_diffusion.utils")
  utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
  stubs = {
    "k_diffusion": package,
    "k_diffusion.utils": utils,
    "torchdiffeq": types.SimpleNamespace(odeint=None),
    "torchsde": types.ModuleType("torchsde"),
  }
  with mock.patch.dict(sys.modules, stubs):
    path = f"{package.__path__[0]}/sampling.py"
    module_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  return module


def k_diffusion_run(k, solver, x, sigmas, noises, s_churn=0.0):
  """k-diffusion's sampler `solver` in float64 on the grid `sigmas`, `noises` its draws."""
  import torch

  model = lambda x, sigma: torch.from_numpy(exact_denoiser(x.numpy(), sigma.numpy()))
  draws = iter(torch.from_numpy(n) for n in noises)
  kwargs = dict(disable=True)
  if solver in ("euler_ancestral", "dpmpp_2m_sde"):
    kwargs["noise_sampler"] = lambda sigma, sigma_next: next(draws)
  if s_churn:
    kwargs["s_churn"] = s_churn
  function = getattr(k, f"sample_{solver}")
  # the churn's draws: torch.randn_like at every step (the whole grid is inside [s_tmin, s_tmax])
  with mock.patch.object(torch, "randn_like", lambda x: next(draws)):
    out = function(
      model, torch.from_numpy(x), torch.from_numpy(np.asarray(sigmas, np.float64)), **kwargs
    )
  return out.numpy()


@pytest.mark.parametrize(
  "solver, s_churn",
  [
    ("euler", 0.0),
    ("heun", 0.0),
    ("dpmpp_2m", 0.0),
    ("euler_ancestral", 0.0),
    ("dpmpp_2m_sde", 0.0),
    ("heun", 4.0),
    ("euler", 4.0),
  ],
)
@pytest.mark.slow
def test_solvers_equal_k_diffusions_step_for_step(solver, s_churn):
  num_steps, rng = 6, jax.random.key(3)
  k = load_k_diffusion_sampling()
  sigmas = np.asarray(sampling.karras_sigmas(num_steps, 0.02, 20.0))
  np.testing.assert_allclose(sigmas, k.get_sigmas_karras(num_steps, 0.02, 20.0).numpy(), rtol=1e-6)
  x = (20.0 * np.random.default_rng(0).normal(size=SHAPE)).astype(np.float64)
  noises = jax_noises(rng, num_steps)
  run = jax.jit(
    lambda x, sigmas: sampling.sigma_sample(exact_denoiser, x, sigmas, solver, rng, s_churn=s_churn)
  )
  # x after each step: both run on the grid's first step + 1 points (the churn's γ depends on the
  # number of steps: only the whole grid has the same)
  for step in range(1 if not s_churn else num_steps, num_steps + 1):
    grid = sigmas[: step + 1]
    want = k_diffusion_run(k, solver, x, grid, noises, s_churn)
    got = np.asarray(run(jnp.asarray(x, jnp.float32), jnp.asarray(grid)))
    assert np.max(np.abs(got - want)) <= 2e-5 * np.max(np.abs(want)), (solver, step)


def edm_algorithm_2(x, sigmas, noises, s_churn, s_tmin=0.0, s_tmax=np.inf, s_noise=1.0):
  """EDM's Algorithm 2 (stochastic Heun) as printed, in float64."""
  n = len(sigmas) - 1
  for i in range(n):
    t, t_next = sigmas[i], sigmas[i + 1]
    gamma = min(s_churn / n, np.sqrt(2) - 1) if s_tmin <= t <= s_tmax else 0.0
    t_hat = t + gamma * t
    x_hat = x + np.sqrt(t_hat**2 - t**2) * s_noise * noises[i]
    d = (x_hat - exact_denoiser(x_hat, np.full(SHAPE[0], t_hat))) / t_hat
    x = x_hat + (t_next - t_hat) * d
    if t_next != 0:
      d_prime = (x - exact_denoiser(x, np.full(SHAPE[0], t_next))) / t_next
      x = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)
  return x


def test_stochastic_heun_is_edms_algorithm_2():
  rng, num_steps = jax.random.key(7), 8
  sigmas = np.asarray(sampling.karras_sigmas(num_steps, 0.002, 80.0), np.float64)
  x = 80.0 * np.random.default_rng(1).normal(size=SHAPE)
  want = edm_algorithm_2(
    x, sigmas, jax_noises(rng, num_steps), s_churn=10.0, s_tmin=0.05, s_tmax=50
  )
  got = sampling.sigma_sample(
    exact_denoiser,
    jnp.asarray(x, jnp.float32),
    sigmas,
    "heun",
    rng,
    s_churn=10.0,
    s_tmin=0.05,
    s_tmax=50.0,
  )
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_deterministic_solvers_map_the_prior_onto_the_data():
  # The probability-flow ODE maps MU + √(STD² + σ_max²) z to MU + STD z, sample by sample.
  z = np.random.default_rng(2).normal(size=SHAPE)
  x = MU + np.sqrt(STD**2 + 80.0**2) * z
  errors = {}
  for solver in ("euler", "heun", "dpmpp_2m"):
    for num_steps in (18, 36):
      sigmas = sampling.karras_sigmas(num_steps, 0.002, 80.0)
      got = sampling.sigma_sample(exact_denoiser, jnp.asarray(x, jnp.float32), sigmas, solver)
      errors[solver, num_steps] = np.max(np.abs(np.asarray(got) - (MU + STD * z)))
  assert errors["heun", 36] < 0.03 and errors["dpmpp_2m", 36] < 0.03, errors
  assert errors["heun", 36] < errors["euler", 36] / 5, errors
  # the order: doubling the steps cuts the error by about 4 (2nd order), Euler's by about 2
  for solver in ("heun", "dpmpp_2m"):
    assert errors[solver, 18] / errors[solver, 36] > 3.5, errors
  assert 1.7 < errors["euler", 18] / errors["euler", 36] < 2.3, errors


@pytest.mark.parametrize("solver", ["euler_ancestral", "dpmpp_2m_sde", "heun"])
def test_stochastic_solvers_sample_the_data_distribution(solver):
  batch = 4000
  # Euler's ancestral steps are first order: their variance error falls as 1/n
  sigmas = sampling.karras_sigmas(300 if solver == "euler_ancestral" else 100, 0.002, 80.0)
  key = jax.random.key(4)
  x = MU + np.sqrt(STD**2 + 80.0**2) * np.asarray(jax.random.normal(key, (batch, *SHAPE[1:])))
  churn = {"s_churn": 40.0} if solver == "heun" else {}
  got = np.asarray(
    sampling.sigma_sample(
      exact_denoiser, jnp.asarray(x, jnp.float32), sigmas, solver, jax.random.key(5), **churn
    )
  )
  # Monte-Carlo tolerances: 4 standard errors of the mean and of the standard deviation, the
  # latter with 3 % for the discretisation
  assert np.all(np.abs(got.mean(0) - MU) < 4 * STD / np.sqrt(batch))
  assert np.all(np.abs(got.std(0) - STD) < (4 / np.sqrt(2 * batch) + 0.03) * STD)


def test_one_compilation_for_every_grid_of_one_length():
  traces = []

  def denoise(x, sigma):
    traces.append(1)  # runs once per trace
    return exact_denoiser(x, sigma)

  run = jax.jit(lambda x, sigmas: sampling.sigma_sample(denoise, x, sigmas, "dpmpp_2m"))
  x = jnp.ones(SHAPE)
  for sigma_max in (10.0, 40.0, 80.0):
    run(x, sampling.karras_sigmas(10, 0.002, sigma_max))
  assert len(traces) == 1 and run._cache_size() == 1


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_discrete_denoiser_gives_the_exact_posterior_mean(mean_type):
  # The exact ε of Gaussian data on the discrete diffusion, written as each parameterisation's
  # output: at σ_t (an integer step) the denoiser is E[x0 | x_t], in closed form.
  betas = schedules.get_beta_schedule("cosine", 200)
  d = diffusion.GaussianDiffusion.from_betas(betas, mean_type=mean_type)
  alphas_cumprod = np.cumprod(1 - betas)

  def model_fn(x_t, t):
    # t is fractional in general; here it lands on integer steps
    a = alphas_cumprod[np.rint(np.asarray(t)).astype(int)].reshape(-1, 1, 1, 1)
    x0 = (np.sqrt(a) * STD**2 * x_t + (1 - a) * MU) / (a * STD**2 + 1 - a)  # E[x0 | x_t]
    eps = (x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)
    return {"eps": eps, "x0": x0, "v": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[mean_type]

  denoise = sampling.discrete_denoiser(d, model_fn)
  steps = np.array([0, 17, 120, 180])  # (at t = 199, σ ≈ 10⁴: x - σ ε cancels in float32)
  sigma = np.sqrt((1 - alphas_cumprod[steps]) / alphas_cumprod[steps])
  x = MU + np.random.default_rng(3).normal(size=SHAPE) * np.sqrt(
    STD**2 + sigma[:, None, None, None] ** 2
  )
  np.testing.assert_allclose(
    denoise(jnp.asarray(x), jnp.asarray(sigma)), exact_denoiser(x, sigma), rtol=1e-4, atol=1e-4
  )


def test_sigma_to_t_interpolates_log_sigma_between_integer_steps():
  log_sigmas = np.log(np.linspace(0.01, 50.0, 30))
  sigma = np.array([0.001, 0.01, 3.0, 49.9, 80.0])
  got = np.asarray(sampling.sigma_to_t(jnp.asarray(log_sigmas), jnp.asarray(sigma)))
  want = np.interp(np.log(sigma), log_sigmas, np.arange(30.0))  # clamps at both ends
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_classifier_guidance_on_the_sigma_solvers_is_the_class_conditional_denoiser():
  """Two classes y ∈ {0, 1} of data N(μ_y, s² I): the exact unconditional ε-model of the mixture
  guided by the exact classifier log p(y | x_t) at scale 1 is the exact class-conditional model
  (D + σ² ∇ log p(y | x) = E[x0 | x, y]): its denoiser equals it, and Heun from the same noise
  lands where the conditional model's Heun lands."""
  d = diffusion.GaussianDiffusion.from_betas(schedules.get_beta_schedule("linear", 200))
  log_sigmas = jnp.log(sampling.discrete_sigmas(d))
  means, s = jnp.stack([jnp.full((3, 3, 2), -0.6), jnp.full((3, 3, 2), 0.5)]), 0.3

  def alpha_bar(t):  # at fractional t, as discrete_denoiser's sigma_to_t interpolates log σ
    sigma = jnp.exp(jnp.interp(t, jnp.arange(len(log_sigmas)), log_sigmas))
    return (1.0 / (1.0 + sigma**2)).reshape((-1, 1, 1, 1))

  def class_log_densities(x_t, t):  # log N(x_t; √ᾱ μ_y, (ᾱ s² + 1 - ᾱ) I) for y = 0, 1: [B, 2]
    a = alpha_bar(t)
    var = a * s**2 + 1.0 - a
    return jnp.stack(
      [-0.5 * jnp.sum((x_t - jnp.sqrt(a) * m) ** 2 / var + jnp.log(var), (1, 2, 3)) for m in means],
      -1,
    )

  def eps_given(x_t, t, y):  # E[ε | x_t, y]
    a = alpha_bar(t)
    return jnp.sqrt(1.0 - a) * (x_t - jnp.sqrt(a) * means[y]) / (a * s**2 + 1.0 - a)

  def unconditional(x_t, t):
    weights = jax.nn.softmax(class_log_densities(x_t, t), -1)[:, :, None, None, None]
    return weights[:, 0] * eps_given(x_t, t, 0) + weights[:, 1] * eps_given(x_t, t, 1)

  labels = jnp.array([0, 1, 1, 0])
  log_prob = lambda x_t, t: jax.nn.log_softmax(class_log_densities(x_t, t), -1)
  guidance = sampling.classifier_guidance(log_prob, labels, 1.0)
  guided = sampling.discrete_denoiser(d, unconditional, cond_fn=guidance)
  conditional = sampling.discrete_denoiser(
    d,
    lambda x_t, t: jnp.where(
      (labels == 0)[:, None, None, None], *(eps_given(x_t, t, y) for y in (0, 1))
    ),
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 3, 3, 2)) * 3, jnp.float32)
  for sigma in (0.05, 0.7, 4.0, 40.0):
    sigmas = jnp.full((4,), sigma, jnp.float32)
    np.testing.assert_allclose(guided(x, sigmas), conditional(x, sigmas), rtol=1e-4, atol=1e-4)
  grid = sampling.karras_sigmas(12, 0.02, 60.0)
  x_T = jnp.asarray(rng.normal(size=(4, 3, 3, 2)) * 60.0, jnp.float32)
  got = sampling.sigma_sample(guided, x_T, grid, "heun")
  want = sampling.sigma_sample(conditional, x_T, grid, "heun")
  np.testing.assert_allclose(got, want, atol=2e-3)
  assert np.all(np.abs(np.asarray(got).mean((1, 2, 3)) - np.asarray(means[labels, 0, 0, 0])) < 0.5)


def test_the_probability_flow_ode_codec_is_the_exact_ode_map_and_inverts():
  """Gaussian data: the ODE maps x(σ_a) to MU + √(STD² + σ_b²)/√(STD² + σ_a²) (x(σ_a) - MU);
  encode follows it up the grid to 2nd order, decode comes back down, their composition is the
  identity."""
  x0 = jnp.asarray(MU + STD * np.random.default_rng(0).normal(size=SHAPE), jnp.float32)
  errors = []
  for num_steps in (40, 80):
    sigmas = sampling.karras_sigmas(num_steps, 0.002, 80.0)[:-1]
    encode, decode = sampling.sigma_ode_codec(exact_denoiser, sigmas)
    z = jax.jit(encode)(x0)
    low, high = float(sigmas[-1]), float(sigmas[0])
    want = MU + np.sqrt(STD**2 + high**2) / np.sqrt(STD**2 + low**2) * (np.asarray(x0) - MU)
    errors.append(np.max(np.abs(np.asarray(z) * high - want)) / high)
  assert errors[1] < 1e-2 and errors[0] / errors[1] > 3.5  # Heun: error ∝ h²
  assert abs(float(np.std(z)) - 1.0) < 0.1  # unit scale: what slerp interpolates
  np.testing.assert_allclose(jax.jit(decode)(z), x0, atol=1e-3)
