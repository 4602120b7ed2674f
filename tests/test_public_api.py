"""The public names of ../shared/DESIGN.md keep their documented signatures: each documented
parameter, in order and with its documented default, leads the function's own (later, optional
keywords may follow), so that a documented call cannot change silently."""

import inspect
import math

import pytest

import ddpm_jax
from ddpm_jax import (
  convert,
  diffusion,
  editing,
  flow,
  losses,
  models,
  pipeline,
  sampling,
  schedules,
  sde,
  train,
)
from ddpm_jax.evaluation import fid

REQUIRED = inspect.Parameter.empty
# function -> its documented parameters: (name, default), REQUIRED where it has none; "**" a
# documented **kwargs
DOCUMENTED = {
  schedules.get_beta_schedule: [("name", REQUIRED), ("num_timesteps", REQUIRED), "**"],
  diffusion.GaussianDiffusion.from_betas: [
    ("betas", REQUIRED),
    ("mean_type", "eps"),
    ("var_type", "fixed_small"),
    ("loss_type", "mse"),
  ],
  diffusion.q_mean_variance: [("d", REQUIRED), ("x0", REQUIRED), ("t", REQUIRED)],
  diffusion.q_sample: [("d", REQUIRED), ("x0", REQUIRED), ("t", REQUIRED), ("noise", REQUIRED)],
  diffusion.q_posterior_mean_variance: [
    ("d", REQUIRED),
    ("x0", REQUIRED),
    ("x_t", REQUIRED),
    ("t", REQUIRED),
  ],
  diffusion.predict_x0_from_eps: [
    ("d", REQUIRED),
    ("x_t", REQUIRED),
    ("t", REQUIRED),
    ("eps", REQUIRED),
  ],
  diffusion.p_mean_variance: [
    ("d", REQUIRED),
    ("model_output", REQUIRED),
    ("x_t", REQUIRED),
    ("t", REQUIRED),
    ("clip_denoised", False),
  ],
  diffusion.training_losses: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("x0", REQUIRED),
    ("t", REQUIRED),
    ("noise", REQUIRED),
  ],
  diffusion.vb_terms_bpd: [
    ("d", REQUIRED),
    ("model_output", REQUIRED),
    ("x0", REQUIRED),
    ("x_t", REQUIRED),
    ("t", REQUIRED),
    ("clip_denoised", False),
  ],
  diffusion.prior_bpd: [("d", REQUIRED), ("x0", REQUIRED)],
  diffusion.calc_bpd_loop: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("x0", REQUIRED),
    ("rng", REQUIRED),
  ],
  losses.normal_kl: [
    ("mean1", REQUIRED),
    ("logvar1", REQUIRED),
    ("mean2", REQUIRED),
    ("logvar2", REQUIRED),
  ],
  losses.discretized_gaussian_log_likelihood: [
    ("x", REQUIRED),
    ("means", REQUIRED),
    ("log_scales", REQUIRED),
  ],
  sampling.space_timesteps: [("num_timesteps", REQUIRED), ("section_counts", REQUIRED)],
  sampling.ddpm_sample: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("rng", REQUIRED),
    ("shape", None),
    ("x_T", None),
    ("num_steps", None),
    ("clip_denoised", True),
  ],
  sampling.ddim_sample: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("rng", REQUIRED),
    ("shape", None),
    ("x_T", None),
    ("num_steps", 50),
    ("eta", 0.0),
    ("clip_denoised", True),
  ],
  sampling.karras_sigmas: [
    ("num_steps", REQUIRED),
    ("sigma_min", REQUIRED),
    ("sigma_max", REQUIRED),
    ("rho", 7.0),
  ],
  sampling.sigma_sample: [
    ("denoise_fn", REQUIRED),
    ("x", REQUIRED),
    ("sigmas", REQUIRED),
    ("solver", REQUIRED),
    ("rng", None),
    ("s_churn", 0.0),
    ("s_tmin", 0.0),
    ("s_tmax", math.inf),
    ("s_noise", 1.0),
  ],
  train.create_train_state: [("config", REQUIRED), ("rng", REQUIRED)],
  train.make_train_step: [("config", REQUIRED)],
  train.train_and_evaluate: [("config", REQUIRED), ("workdir", REQUIRED)],
  models.get_model: [("model_config", REQUIRED)],  # called positionally: get_model(config.model)
  sde.VPSDE: [("beta_min", 0.1), ("beta_max", 20.0), ("N", 1000)],
  sde.subVPSDE: [("beta_min", 0.1), ("beta_max", 20.0), ("N", 1000)],
  sde.VESDE: [("sigma_min", 0.01), ("sigma_max", 50.0), ("N", 1000)],
  sde.pc_sample: [
    ("s", REQUIRED),
    ("score_fn", REQUIRED),
    ("rng", REQUIRED),
    ("shape", REQUIRED),
    ("predictor", "reverse_diffusion"),
    ("corrector", "langevin"),
    ("snr", 0.16),
    ("n_corrector", 1),
    ("denoise", True),
  ],
  sde.ode_sample: [
    ("s", REQUIRED),
    ("score_fn", REQUIRED),
    ("rng", REQUIRED),
    ("shape", None),
    ("z", None),
  ],
  sde.ode_log_likelihood: [
    ("s", REQUIRED),
    ("score_fn", REQUIRED),
    ("x", REQUIRED),
    ("rng", REQUIRED),
    ("hutchinson", True),
  ],
  sde.annealed_langevin_sample: [
    ("sigmas", REQUIRED),
    ("score_fn", REQUIRED),
    ("rng", REQUIRED),
    ("shape", REQUIRED),
    ("n_steps_each", 100),
    ("step_lr", 2e-5),
    ("denoise", True),
  ],
  fid.load_inception_params: [("path", REQUIRED)],
  fid.inception_features: [("params", REQUIRED), ("images", REQUIRED)],
  fid.frechet_distance: [
    ("mu1", REQUIRED),
    ("sigma1", REQUIRED),
    ("mu2", REQUIRED),
    ("sigma2", REQUIRED),
  ],
  fid.inception_score: [("logits", REQUIRED), ("num_splits", 10)],
  convert.from_guided_diffusion: [("state_dict_or_path", REQUIRED), "**"],
  convert.from_guided_diffusion_classifier: [("state_dict_or_path", REQUIRED), "**"],
  convert.from_diffusers: [("model_dir", REQUIRED)],
  convert.from_dit: [("state_dict_or_path", REQUIRED), "**"],
  flow.interpolate: [("x0", REQUIRED), ("noise", REQUIRED), ("t", REQUIRED), ("path", "linear")],
  flow.velocity: [("x0", REQUIRED), ("noise", REQUIRED), ("t", REQUIRED), ("path", "linear")],
  flow.timesteps: [("num_steps", REQUIRED), ("shift", 1.0)],
  flow.sample: [
    ("velocity_fn", REQUIRED),
    ("x_1", REQUIRED),
    ("ts", REQUIRED),
    ("solver", "euler"),
  ],
  editing.inpaint: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("rng", REQUIRED),
    ("x_known", REQUIRED),
    ("mask", REQUIRED),
    ("num_steps", None),
    ("resample", 1),
    ("jump", 1),
  ],
  editing.sdedit: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("rng", REQUIRED),
    ("x_input", REQUIRED),
    ("strength", REQUIRED),
    ("num_steps", None),
  ],
  editing.colorize: [
    ("d", REQUIRED),
    ("model_fn", REQUIRED),
    ("rng", REQUIRED),
    ("gray", REQUIRED),
    ("num_steps", None),
  ],
  ddpm_jax.load: [("workdir", REQUIRED), ("config", None)],
  pipeline.load: [("workdir", REQUIRED), ("config", None)],
}


@pytest.mark.parametrize("function", DOCUMENTED, ids=lambda f: f.__qualname__)
def test_documented_signature(function):
  parameters = list(inspect.signature(function).parameters.values())
  documented = DOCUMENTED[function]
  positional = [p for p in documented if p != "**"]
  got = [(p.name, p.default) for p in parameters[: len(positional)]]
  assert got == positional, f"{function.__qualname__}: {got} != documented {positional}"
  if "**" in documented:
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
  # anything beyond the documented parameters is optional: documented calls keep working
  extra = [p for p in parameters[len(positional) :] if p.kind is not inspect.Parameter.VAR_KEYWORD]
  assert all(p.default is not REQUIRED for p in extra), extra


def test_the_pipeline_sample_takes_its_documented_keywords():
  parameters = inspect.signature(pipeline.Pipeline.sample).parameters
  for name in ("num_images", "sampler", "num_steps", "labels", "contexts", "low_res"):
    assert name in parameters
  documented = [("guidance_scale", None), ("eta", None), ("seed", 0), ("uint8", True)]
  documented += [("x_T", None), ("classifier", None), ("classifier_scale", None)]
  for name, default in documented:
    assert parameters[name].default == default, name
