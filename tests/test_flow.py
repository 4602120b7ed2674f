"""Flow matching (ddpm_jax/flow.py, config.family="flow"): the velocity is the path's derivative,
the grid and the Euler step are diffusers' FlowMatchEulerDiscreteScheduler's, the exact velocity of
Gaussian data carries noise onto the data along the closed-form ODE map x0 = μ + s·x1, and the
family's loss, sampler and codec are those functions on its network."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import families, flow
from ddpm_jax.families import config_validation
from helpers import REPO

PATHS = tuple(flow.PATHS)
DIGITS_NET = os.path.join(REPO, "ddpm_jax", "evaluation", "assets", "digits_8_feature_net.npz")


@pytest.mark.parametrize("path", PATHS)
def test_the_velocity_is_the_derivative_of_the_path(path):
  rng = np.random.default_rng(0)
  x0, noise = rng.normal(size=(2, 3, 4, 4, 1))
  t = np.array([0.1, 0.5, 0.93])
  h = 1e-3
  ahead, behind = (flow.interpolate(x0, noise, t + d, path) for d in (h, -h))
  np.testing.assert_allclose(
    flow.velocity(x0, noise, t, path), (ahead - behind) / (2 * h), rtol=1e-3, atol=1e-3
  )
  # the ends: data at t = 0, noise at t = 1
  np.testing.assert_allclose(flow.interpolate(x0, noise, np.zeros(3), path), x0, atol=1e-6)
  np.testing.assert_allclose(flow.interpolate(x0, noise, np.ones(3), path), noise, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_grid_and_euler_are_diffusers_flow_match_scheduler(shift):
  from diffusers import FlowMatchEulerDiscreteScheduler
  import torch

  scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
  num_steps = 7
  scheduler.set_timesteps(num_steps, sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
  ts = flow.timesteps(num_steps, shift)
  np.testing.assert_allclose(ts, scheduler.sigmas.numpy(), atol=1e-6)
  velocity_fn = lambda x, t: jnp.sin(3 * x) + t[:, None, None, None] * x  # any smooth field
  x_1 = np.random.default_rng(1).normal(size=(2, 4, 4, 1)).astype(np.float32)
  sample = torch.from_numpy(x_1.transpose(0, 3, 1, 2))
  for timestep, sigma in zip(scheduler.timesteps, scheduler.sigmas):
    t = torch.full((2,), float(sigma))
    v = torch.sin(3 * sample) + t[:, None, None, None] * sample
    sample = scheduler.step(v, timestep, sample).prev_sample
  got = flow.sample(velocity_fn, x_1, ts, "euler")
  np.testing.assert_allclose(got, sample.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def gaussian_velocity(mu, s, path):
  """The exact velocity E[α' x0 + σ' ε | x_t] of x0 ~ N(μ, s²) per element (x0 and ε jointly
  Gaussian given x_t)."""

  def velocity_fn(x, t):
    alpha, sigma, d_alpha, d_sigma = (c[:, None] for c in flow.coefficients(t, path))
    variance = alpha**2 * s**2 + sigma**2
    residual = x - alpha * mu
    x0_mean = mu + alpha * s**2 / variance * residual
    eps_mean = sigma / variance * residual
    return d_alpha * x0_mean + d_sigma * eps_mean

  return velocity_fn


@pytest.mark.parametrize("path", PATHS)
def test_the_exact_velocity_of_gaussian_data_maps_noise_onto_the_data(path):
  """For x0 ~ N(μ, s²) the ODE's flow is affine: x_t = α_t μ + √(α_t² s² + σ_t²) x1, so the sample
  of x1 is μ + s·x1: Heun reaches it to 1e-3 on 160 steps, and halving the step divides Heun's
  error by about 4 (second order) and Euler's by 2 (first order)."""
  mu, s = np.array([0.5, -1.0, 0.0]), np.array([0.3, 1.5, 0.05])
  x_1 = np.random.default_rng(2).normal(size=(500, 3)).astype(np.float32)
  want = mu + s * x_1
  velocity_fn = gaussian_velocity(mu, s, path)

  def error(num_steps, solver):
    return np.max(np.abs(flow.sample(velocity_fn, x_1, flow.timesteps(num_steps), solver) - want))

  assert error(160, "heun") < 1e-3
  assert 0.2 < error(80, "heun") / error(40, "heun") < 0.3
  assert 0.45 < error(80, "euler") / error(40, "euler") < 0.55
  # and back: the same solver on the reversed grid encodes the data as its noise (measured in data
  # units: the narrow dimension's noise is the data's error over s = 0.05)
  encoded = flow.sample(velocity_fn, want.astype(np.float32), flow.timesteps(160)[::-1], "heun")
  np.testing.assert_allclose(s * encoded, s * x_1, atol=1e-3)


def gaussian_posterior_means(mu, s, path):
  """(E[x0 | x_t], E[ε | x_t]) of x0 ~ N(μ, s²) per element, and the score of x_t's marginal."""

  def means(x, t):
    alpha, sigma = (c[:, None] for c in flow.coefficients(t, path)[:2])
    variance = alpha**2 * s**2 + sigma**2
    residual = x - alpha * mu
    return (
      mu + alpha * s**2 / variance * residual,
      sigma / variance * residual,
      -residual / variance,
    )

  return means


@pytest.mark.parametrize("path", PATHS)
def test_x0_and_noise_predictions_turn_into_the_velocity(path):
  """The exact x0 and ε of Gaussian data give the exact velocity through `to_velocity`; from the
  velocity, `noise_from_velocity` and `score_from_velocity` recover the exact ε and marginal score
  (Tweedie) on all of (0, 1)."""
  mu, s = np.array([0.5, -1.0, 0.0]), np.array([0.3, 1.5, 0.05])
  rng = np.random.default_rng(7)
  t = jnp.asarray(rng.uniform(0.02, 0.98, size=64), jnp.float32)
  x = jnp.asarray(rng.normal(size=(64, 3)) * 1.3, jnp.float32)
  v = gaussian_velocity(mu, s, path)(x, t)
  x0_mean, eps_mean, score = gaussian_posterior_means(mu, s, path)(x, t)
  np.testing.assert_allclose(flow.to_velocity("x0", x0_mean, x, t, path), v, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    flow.to_velocity("epsilon", eps_mean, x, t, path), v, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(flow.noise_from_velocity(v, x, t, path), eps_mean, atol=1e-4)
  np.testing.assert_allclose(flow.score_from_velocity(v, x, t, path), score, rtol=1e-4, atol=1e-4)
  x0, noise = (jnp.asarray(rng.normal(size=(64, 3)), jnp.float32) for _ in range(2))
  for prediction, want in (("x0", x0), ("epsilon", noise), ("velocity", None)):
    got = flow.target(prediction, x0, noise, t, path)
    np.testing.assert_allclose(got, flow.velocity(x0, noise, t, path) if want is None else want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("diffusion", tuple(flow.DIFFUSIONS))
def test_sits_sde_maps_noise_onto_the_data(path, diffusion):
  """Euler–Maruyama on SiT's reverse SDE with the exact velocity of Gaussian data ends at the
  data's mean and standard deviation (Monte Carlo, 4000 samples: a 4σ band plus the step's bias);
  at norm 0 the SDE is the ODE, step for step Euler's."""
  mu, s = np.array([0.5, -1.0, 0.0]), np.array([0.3, 1.5, 0.1])
  velocity_fn = gaussian_velocity(mu, s, path)
  x_1 = np.random.default_rng(8).normal(size=(4000, 3)).astype(np.float32)
  ts = np.clip(flow.timesteps(250), 0.0, 1.0 - 1e-3 * (diffusion == "sbdm"))
  x = np.asarray(flow.sample_sde(velocity_fn, x_1, ts, jax.random.key(0), path, diffusion))
  stderr = s / np.sqrt(len(x))
  assert np.all(np.abs(x.mean(0) - mu) < 4 * stderr + 0.01), x.mean(0)
  assert np.all(np.abs(x.std(0) - s) < 4 * stderr + 0.02 * s), x.std(0)
  assert np.abs(np.corrcoef(x.T)[0, 1]) < 0.07  # the noise dimensions stay independent
  ode = flow.sample_sde(velocity_fn, x_1[:8], ts, jax.random.key(0), path, diffusion, norm=0.0)
  np.testing.assert_allclose(ode, flow.sample(velocity_fn, x_1[:8], ts, "euler"), atol=1e-5)


def test_logit_normal_times_are_sd3s():
  t = flow.sample_t(jax.random.key(0), 200_000, "logit_normal", 0.5, 0.8)
  logits = np.log(t / (1 - t))
  assert abs(logits.mean() - 0.5) < 0.01 and abs(logits.std() - 0.8) < 0.01
  uniform = flow.sample_t(jax.random.key(1), 200_000, "uniform")
  assert abs(float(uniform.mean()) - 0.5) < 0.005 and 0 <= uniform.min() and uniform.max() < 1


def flow_config(network="unet", **changes):
  sys.path.insert(0, REPO)
  from configs import dit_default, flow_default

  config = flow_default.get_config() if network == "unet" else dit_default.get_config("flow")
  if network == "dit":
    config.model.update(depth=2, hidden_size=32, num_heads=2)
  config.model.num_classes = 10
  config.training.label_dropout = 0.1
  for field, value in changes.items():
    block, name = field.split(".")
    config[block][name] = value
  config_validation.validate_config(config)
  return config


def random_params(family, seed=0):
  """Initial parameters with every leaf random (zero-initialised outputs would hide errors)."""
  params = family.init_params(jax.random.key(seed))
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  noisy = [0.2 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
  return jax.tree_util.tree_unflatten(tree, noisy)


@pytest.mark.parametrize("network", ["unet", "dit"])
def test_the_family_loss_is_the_velocity_regression(network):
  config = flow_config(network, **{"flow.path": "cosine"})
  family = families.get_family(config)
  params = random_params(family)
  x0 = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1), minval=-1, maxval=1)
  batch = {"image": x0, "label": jnp.array([1, 2, 3, 4])}
  draws = family.draw(families.step_keys(jax.random.key(4)), batch, None)
  t, noise, labels = draws["t"], draws["noise"], draws["labels"]
  x_t = jnp.cos(0.5 * jnp.pi * t)[:, None, None, None] * x0
  x_t = x_t + jnp.sin(0.5 * jnp.pi * t)[:, None, None, None] * noise
  target = (
    0.5
    * jnp.pi
    * (
      jnp.cos(0.5 * jnp.pi * t)[:, None, None, None] * noise
      - jnp.sin(0.5 * jnp.pi * t)[:, None, None, None] * x0
    )
  )
  out = family.model.apply(params, x_t, 1000.0 * t, labels)
  want = jnp.mean((out - target) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(family.loss(params, batch, draws, None), want, rtol=1e-5)


@pytest.mark.parametrize("sampler", flow.SOLVERS)
def test_the_familys_sampler_and_codec_integrate_its_guided_velocity(sampler):
  config = flow_config(
    "dit", **{"sampling.sampler": sampler, "sampling.num_steps": 6, "flow.shift": 2.0}
  )
  config.sampling.guidance_scale = 1.5
  family = families.get_family(config)
  params = random_params(family)
  labels = jnp.array([0, 3])
  x_1 = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  model = family.model

  def guided(x, t):  # (1 + w) v(x, t, y) - w v(x, t, ∅)
    v = lambda y: model.apply(params, x, 1000.0 * t, y)
    return 2.5 * v(labels) - 1.5 * v(None)

  want = flow.sample(guided, x_1, flow.timesteps(6, 2.0), sampler)
  cond = families.Cond(label=labels)
  sample_fn = family.make_sampler(2)
  got = sample_fn(params, jax.random.key(0), cond, x_T=x_1)
  np.testing.assert_allclose(got, jnp.clip(want, -1, 1), atol=1e-5)
  encode, decode = family.make_latent_codec(6)
  np.testing.assert_allclose(decode(params, x_1, cond), want, atol=1e-5)
  back = flow.sample(guided, want, flow.timesteps(6, 2.0)[::-1], sampler)
  np.testing.assert_allclose(encode(params, want, cond), back, atol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
def test_x0_and_noise_prediction_families(prediction):
  """The loss regresses the prediction's own target; the samplers integrate its velocity on the
  grid kept time_eps off the singular end; "sde" at sde_norm 0 is the Euler ODE."""
  config = flow_config("dit", **{"flow.prediction": prediction, "sampling.num_steps": 5})
  family = families.get_family(config)
  params = random_params(family)
  x0 = jax.random.uniform(jax.random.key(3), (2, 8, 8, 1), minval=-1, maxval=1)
  labels = jnp.array([1, 2])
  batch = {"image": x0, "label": labels}
  draws = family.draw(families.step_keys(jax.random.key(4)), batch, None)
  t, noise = draws["t"], draws["noise"]
  out = family.model.apply(params, flow.interpolate(x0, noise, t), 1000.0 * t, draws["labels"])
  target = x0 if prediction == "x0" else noise
  want = jnp.mean((out - target) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(family.loss(params, batch, draws, None), want, rtol=1e-5)

  def velocity(x, t):
    return flow.to_velocity(prediction, family.model.apply(params, x, 1000.0 * t, labels), x, t)

  ts = flow.timesteps(5)
  ts = np.clip(ts, 1e-3, 1.0) if prediction == "x0" else np.clip(ts, 0.0, 1.0 - 1e-3)
  x_1 = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  want = jnp.clip(flow.sample(velocity, x_1, ts, "euler"), -1, 1)
  cond = families.Cond(label=labels)
  got = family.make_sampler(2)(params, jax.random.key(0), cond, x_T=x_1)
  np.testing.assert_allclose(got, want, atol=1e-5)
  sde_config = flow_config(
    "dit",
    **{"flow.prediction": prediction, "sampling.num_steps": 5, "sampling.sampler": "sde"},
  )
  sde_config.flow.sde_norm = 0.0
  sde_family = families.get_family(sde_config)
  got = sde_family.make_sampler(2)(params, jax.random.key(0), cond, x_T=x_1)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_sde_sampler_samples_edits_and_differs_by_seed():
  config = flow_config("dit", **{"sampling.sampler": "sde", "sampling.num_steps": 5})
  family = families.get_family(config)
  params = random_params(family)
  cond = families.Cond(label=jnp.array([1, 2]))
  x_1 = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  sample_fn = family.make_sampler(2)
  first, again, other = (sample_fn(params, jax.random.key(k), cond, x_T=x_1) for k in (0, 0, 1))
  np.testing.assert_array_equal(first, again)
  assert float(jnp.max(jnp.abs(first - other))) > 1e-2  # the SDE's own noise
  assert family.make_trajectory()(params, cond).num_steps == 5


def test_flow_settings_are_checked():
  with pytest.raises(ValueError, match="flow.path must be one of linear, cosine"):
    flow_config(**{"flow.path": "quadratic"})
  with pytest.raises(ValueError, match="sampling.sampler must be one of euler, heun"):
    flow_config(**{"sampling.sampler": "ddim"})
  with pytest.raises(ValueError, match="flow.logit_std=0.5 shapes flow.t_sampling='logit_normal'"):
    flow_config(**{"flow.t_sampling": "uniform", "flow.logit_std": 0.5})
  with pytest.raises(ValueError, match="not divisible by model.patch_size=3"):
    flow_config("dit", **{"model.patch_size": 3})
  with pytest.raises(ValueError, match="flow.prediction must be one of velocity, x0, epsilon"):
    flow_config(**{"flow.prediction": "score"})
  with pytest.raises(ValueError, match="flow.sde_norm=0.5 is read by sampling.sampler='sde' only"):
    flow_config(**{"flow.sde_norm": 0.5})
  with pytest.raises(ValueError, match="flow.time_eps=0.01 is unused"):
    flow_config(**{"flow.time_eps": 0.01})
  flow_config(**{"flow.time_eps": 0.01, "flow.prediction": "x0"})
  flow_config(**{"flow.time_eps": 0.01, "sampling.sampler": "sde", "flow.sde_diffusion": "sbdm"})


@pytest.mark.slow
@pytest.mark.parametrize(
  "config_name", ["flow_default.py", "dit_default.py:flow", "dit_default.py"]
)
def test_train_sample_and_interpolate_from_the_command_line(config_name, tmp_path):
  common = [
    f"--config={REPO}/configs/{config_name}",
    f"--workdir={tmp_path}",
    "--config.training.num_train_steps=20",
    "--config.training.checkpoint_every_steps=20",
    "--config.training.sample_every_steps=20",
    "--config.sampling.num_samples=8",
    "--config.sampling.batch_size=8",
    "--config.sampling.num_steps=4",
    "--config.eval.num_fid_samples=0",
    "--config.data.num_workers=0",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  # editing (inpainting through the family's trajectory) and evaluation (feature-FD, bits/dim by
  # the ODE's likelihood) on the U-Net's run
  edit = ("edit", "eval") if config_name == "flow_default.py" else ()
  evaluation = [
    "--config.eval.num_fid_samples=16",
    "--config.eval.bpd_num_batches=1",
    "--config.training.batch_size=8",
  ]
  # --mode=sample is the same job for every family (once here); training samples each one's grid
  sample = ("sample",) if config_name == "flow_default.py" else ()
  for mode in ("train", *sample, "interpolate", *edit):
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "ddpm_jax.main",
        f"--mode={mode}",
        *common,
        *(evaluation if mode == "eval" else []),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
  if sample:
    assert np.load(tmp_path / "samples" / "samples_20.npz")["images"].shape == (8, 8, 8, 1)
  assert (tmp_path / "samples" / "ema_step_00000020.png").exists()
  assert np.load(tmp_path / "edits" / "interpolate_20.npz")["frames"].shape == (8, 8, 8, 1)
  if edit:
    assert np.load(tmp_path / "edits" / "inpaint_20.npz")["results"].shape[1:] == (8, 8, 1)
    results = json.loads((tmp_path / "eval_20.json").read_text())
    assert np.isfinite(results["feature_fd"]) and 0 < results["bpd"] < 20, results


@pytest.mark.parametrize("path", PATHS)
def test_the_odes_likelihood_of_gaussian_data_is_its_density(path):
  mu, s = np.array([0.5, -1.0, 0.0]), np.array([0.3, 1.5, 0.2])
  x0 = (mu + s * np.random.default_rng(3).normal(size=(6, 3))).astype(np.float32)
  got = flow.log_likelihood(gaussian_velocity(mu, s, path), x0, jax.random.key(0), False)
  want = np.sum(-0.5 * np.log(2 * np.pi * s**2) - 0.5 * ((x0 - mu) / s) ** 2, axis=1)
  np.testing.assert_allclose(got, want, atol=2e-3)
  # and the adaptive sampler carries noise onto the data as the grid solvers do
  x_1 = np.random.default_rng(4).normal(size=(200, 3)).astype(np.float32)
  x, evaluations = flow.sample_adaptive(gaussian_velocity(mu, s, path), x_1)
  np.testing.assert_allclose(x, mu + s * x_1, atol=1e-3)
  assert 10 < int(evaluations) < 1000


def test_the_exact_velocity_minimises_the_flow_matching_loss():
  """Monte Carlo on Gaussian data: the loss of v* + δ exceeds that of v* by E‖δ‖² (v* is the
  regression target's conditional mean, so the cross term vanishes) and v* + δ loses for every δ."""
  mu, s = np.array([0.5, -1.0]), np.array([0.3, 1.5])
  rng = np.random.default_rng(5)
  n = 400_000
  x0 = mu + s * rng.normal(size=(n, 2))
  noise, t = rng.normal(size=(n, 2)), rng.uniform(size=n)
  x_t, target = flow.interpolate(x0, noise, t), flow.velocity(x0, noise, t)
  exact = gaussian_velocity(mu, s, "linear")(x_t, jnp.asarray(t))
  loss = lambda v: float(jnp.mean(jnp.sum((v - target) ** 2, axis=1)))
  best = loss(exact)
  for delta in (np.array([0.1, 0.0]), np.array([-0.05, 0.2])):
    excess = loss(exact + delta) - best
    assert excess > 0 and abs(excess - np.sum(delta**2)) < 0.2 * np.sum(delta**2), (delta, excess)
  shrunk = loss(0.9 * exact) - best  # a δ proportional to v*: E‖0.1 v*‖²
  assert abs(shrunk - float(jnp.mean(jnp.sum((0.1 * exact) ** 2, axis=1)))) < 0.02 * shrunk + 1e-3


@pytest.mark.slow  # (the fast tier's 2 minutes: seconds of training or sampling)
def test_the_adaptive_sampler_and_bits_per_dim_of_the_family():
  config = flow_config("dit", **{"sampling.sampler": "ode", "sampling.ode_tolerance": 1e-3})
  family = families.get_family(config)
  params = random_params(family)
  labels = jnp.array([0, 3])
  x_1 = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  v = lambda x, t: family.model.apply(params, x, 1000.0 * t, labels)
  want = flow.sample_adaptive(v, x_1, 1e-3, 1e-3)[0]
  got = family.make_sampler(2)(params, jax.random.key(0), families.Cond(label=labels), x_T=x_1)
  np.testing.assert_allclose(got, jnp.clip(want, -1, 1), atol=1e-5)
  with pytest.raises(ValueError, match="Editing runs on the samplers euler, heun"):
    family.make_trajectory()
  # interpolation's codec has a grid: the same ODE by Heun
  encode, decode = family.make_latent_codec(4)
  np.testing.assert_allclose(
    decode(params, x_1, families.Cond(label=labels)),
    flow.sample(v, x_1, flow.timesteps(4), "heun"),
    atol=1e-5,
  )
  x0 = jnp.clip(x_1, -1, 1)
  bpd = family.bits_per_dim(params, x0, jax.random.key(1), families.Cond(label=labels))["bpd"]
  assert bpd.shape == (2,) and np.all(np.isfinite(bpd))
  with pytest.raises(ValueError, match="sampling.s_churn=1.0: config.family='flow'"):
    flow_config(**{"sampling.s_churn": 1.0})


def write_pairs(path, count=40, size=8, labels=True):
  rng = np.random.default_rng(9)
  arrays = {
    "image": rng.uniform(-1, 1, (count, size, size, 1)).astype(np.float32),
    "noise": rng.normal(size=(count, size, size, 1)).astype(np.float32),
  }
  if labels:
    arrays["label"] = rng.integers(0, 10, count)
  np.savez(path, **arrays)
  return arrays


def reflow_data(path, held_out=5):
  return {
    "data.dataset": "reflow",
    "data.path": str(path),
    "data.eval_split": f"train[{100 - held_out}%:]",
    "data.train_split": f"train[:{100 - held_out}%]",
  }


def test_reflow_pairs_are_the_flows_coupling(tmp_path):
  """data.dataset="reflow" reads an .npz of (image, noise) pairs as float batches, and the family
  trains on each image's own noise: the loss is ‖v_θ(x_t) - (noise - image)‖² of the pair."""
  from ddpm_jax.data import loader
  from ddpm_jax.jobs import train

  pairs = write_pairs(tmp_path / "pairs.npz")
  config = flow_config(**reflow_data(tmp_path / "pairs.npz"))
  batch = next(
    loader.batches(config.data, split="train[:95%]", global_batch_size=4, seed=0, uint8=True)
  )
  batch = train.scale_images({name: jnp.asarray(array) for name, array in batch.items()})
  rows = [
    int(np.flatnonzero(np.all(pairs["image"] == image, axis=(1, 2, 3)))[0])
    for image in np.asarray(batch["image"])
  ]
  np.testing.assert_array_equal(batch["noise"], pairs["noise"][rows])
  np.testing.assert_array_equal(batch["label"], pairs["label"][rows])
  family = families.get_family(config)
  params = random_params(family)
  draws = family.draw(families.step_keys(jax.random.key(4)), batch, None)
  np.testing.assert_array_equal(draws["noise"], batch["noise"])
  t, x0, noise = draws["t"], batch["image"], batch["noise"]
  out = family.model.apply(params, flow.interpolate(x0, noise, t), 1000.0 * t, draws["labels"])
  want = jnp.mean((out - (noise - x0)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(family.loss(params, batch, draws, None), want, rtol=1e-5)
  with pytest.raises(ValueError, match="data.random_flip=True would flip a reflow pair"):
    flow_config(**reflow_data("x.npz"), **{"data.random_flip": True})
  with pytest.raises(ValueError, match="config.family='flow' trains on them, not"):
    from configs import default

    config_validation.validate_config(default.with_family(config, "gaussian"))
  wrong_size = flow_config(**reflow_data(tmp_path / "pairs.npz"))
  wrong_size.data.image_size = 16
  with pytest.raises(ValueError, match=r"holds images of shape \(8, 8, 1\)"):
    next(loader.batches(wrong_size.data, split="train", global_batch_size=4, seed=0))


@pytest.mark.slow
def test_reflow_from_the_command_line(tmp_path):
  """A teacher trains, --mode=reflow writes its ODE's (noise, image) pairs (each the pipeline's
  sample of that noise), and a 2-rectified student trains on them and samples."""
  import ddpm_jax

  teacher, student = tmp_path / "teacher", tmp_path / "student"
  common = [
    f"--config={REPO}/configs/flow_default.py",
    "--config.training.num_train_steps=10",
    "--config.training.checkpoint_every_steps=10",
    "--config.training.sample_every_steps=10",
    "--config.training.batch_size=8",
    "--config.sampling.num_samples=24",
    "--config.sampling.batch_size=8",
    "--config.sampling.num_steps=3",
    "--config.eval.num_fid_samples=0",
    "--config.data.num_workers=0",
  ]
  pairs_path = teacher / "reflow" / "pairs_10.npz"
  runs = [
    (teacher, "train", []),
    (teacher, "reflow", []),
    (student, "train", [f"--config.{f}={v}" for f, v in reflow_data(pairs_path, 50).items()]),
    # feature-FD against the pairs' images (the teacher's samples), by the digits' feature net
    (
      student,
      "eval",
      [f"--config.{f}={v}" for f, v in reflow_data(pairs_path, 50).items()]
      + [
        "--config.eval.num_fid_samples=8",
        "--config.eval.bpd_num_batches=0",
        f"--config.eval.feature_net_path={DIGITS_NET}",
      ],
    ),
  ]
  for workdir, mode, extra in runs:
    result = subprocess.run(
      [sys.executable, "-m", "ddpm_jax.main", f"--mode={mode}", f"--workdir={workdir}", *common]
      + extra,
      cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
  pairs = np.load(pairs_path)
  assert pairs["image"].shape == pairs["noise"].shape == (24, 8, 8, 1)
  assert pairs["image"].dtype == np.float32 and "label" not in pairs.files
  again = ddpm_jax.load(str(teacher)).sample(4, x_T=pairs["noise"][:4], uint8=False)
  np.testing.assert_allclose(again, pairs["image"][:4], atol=1e-4)
  assert (student / "checkpoints" / "10").is_dir() and any((student / "samples").iterdir())
  assert np.isfinite(json.loads((student / "eval_10.json").read_text())["feature_fd"])
