"""Flow matching / rectified flow (ddpm_jax/flow.py): the network (a U-Net or a DiT) regresses the
velocity v = dx_t/dt of the path x_t = α_t x0 + σ_t ε (flow.path: "linear", rectified flow / SD3;
"cosine", SiT's GVP), or x0 or ε (flow.prediction, SiT's model types), at t drawn uniformly or
logit-normally (SD3's, flow.t_sampling), seeing flow.time_scale·t as its noise-level input (1000:
diffusers' and SD3's). Sampling integrates dx/dt = v from t = 1 to 0 by Euler or Heun
(sampling.sampler) on sampling.num_steps times shifted by flow.shift (SD3's resolution shift), by
an adaptive ODE ("ode") or by SiT's reverse SDE ("sde", flow.sde_diffusion), with classifier-free
guidance on v for class-conditional models; x0 and ε predictions keep flow.time_eps off the end
where they are singular. The same ODE run from data to noise is the latent codec; bits/dim by its
likelihood (flow.log_likelihood, adaptive, Hutchinson's divergence; eval.bpd_num_batches, 0 by
default here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import flow, models, sampling, sde
from ddpm_jax.families import base, gaussian, latent

# "ode": adaptive (sampling.ode_tolerance), no fixed grid; "sde": SiT's Euler–Maruyama
SAMPLERS = (*flow.SOLVERS, "ode", "sde")
# the sampler-specific fields its samplers read: not EDM's σ grid and churn, which the σ-space
# solvers of the same names ("euler", "heun") read in other families
READ_SAMPLER_FIELDS = {"ode_tolerance": ("ode",)}
# bits/dim integrates an adaptive ODE with a Jacobian-vector product per evaluation: opt in
SHARED_DEFAULTS = {"sampling.sampler": "euler", "sampling.num_steps": 50, "eval.bpd_num_batches": 0}


def default_config() -> ml_collections.ConfigDict:
  """config.flow: the path, the training times and the sampling grid's shift."""
  flow_config = ml_collections.ConfigDict()
  flow_config.path = "linear"  # x_t = (1 - t) x0 + t ε; "cosine": cos(πt/2) x0 + sin(πt/2) ε
  flow_config.t_sampling = "logit_normal"  # SD3's t = sigmoid(n), n ~ N(logit_mean, logit_std²)
  flow_config.logit_mean = 0.0
  flow_config.logit_std = 1.0
  flow_config.shift = 1.0  # sampling times t' = s t / (1 + (s - 1) t); SD3 at 1024²: 3.0
  flow_config.time_scale = 1000.0  # the network sees time_scale · t
  flow_config.prediction = "velocity"  # the network's target: "velocity" | "x0" | "epsilon"
  # sampling keeps this far off an end where the prediction (x0: t = 0, ε: t = 1) or the SDE's
  # diffusion ("sbdm": t = 1) is singular (SiT's sample_eps)
  flow_config.time_eps = 1e-3
  flow_config.sde_diffusion = "sigma"  # sampler "sde": its w_t, flow.DIFFUSIONS
  flow_config.sde_norm = 1.0  # and w_t's scale
  return flow_config


SDE_FIELDS = ("sde_diffusion", "sde_norm")  # read by the sampler "sde" only


def sampling_interval(flow_config, sampler: str) -> tuple[float, float]:
  """(t_start, t_end) of sampling: (1, 0), moved in by flow.time_eps at a singular end."""
  eps = flow_config.time_eps
  at_one = flow_config.prediction == "epsilon" or (
    sampler == "sde" and flow_config.sde_diffusion == "sbdm"
  )
  return 1.0 - eps * at_one, eps * (flow_config.prediction == "x0")


CONFIG_BLOCKS = {"flow": default_config}
RANGES = {
  "flow.logit_std": (0, False, None, False),
  "flow.shift": (0, False, None, False),
  "flow.time_scale": (0, False, None, False),
  "flow.time_eps": (0, False, 0.5, False),
  "flow.sde_norm": (0, True, None, False),
}


def validate(config: ml_collections.ConfigDict) -> list[str]:
  flow_config, problems = config.flow, []
  choices = (
    ("flow.path", flow_config.path, tuple(flow.PATHS)),
    ("flow.t_sampling", flow_config.t_sampling, flow.T_SAMPLINGS),
    ("flow.prediction", flow_config.prediction, flow.PREDICTIONS),
    ("flow.sde_diffusion", flow_config.sde_diffusion, tuple(flow.DIFFUSIONS)),
    ("sampling.sampler", config.sampling.sampler, SAMPLERS),
  )
  refused = {field: known for field, value, known in choices if value not in known}
  problems += [
    f"config.family='flow': {field} must be one of {', '.join(known)}, not {value!r}."
    for field, value, known in choices
    if field in refused
  ]
  defaults, sampler = default_config(), config.sampling.sampler
  changed = lambda name: flow_config[name] != defaults[name]
  if flow_config.t_sampling == "uniform":  # the logit-normal's parameters left at their defaults
    problems += [
      f"flow.{name}={flow_config[name]} shapes flow.t_sampling='logit_normal', not 'uniform'."
      for name in ("logit_mean", "logit_std")
      if changed(name)
    ]
  if sampler != "sde":
    problems += [
      f"flow.{name}={flow_config[name]!r} is read by sampling.sampler='sde' only, not {sampler!r}."
      for name in SDE_FIELDS
      if changed(name) and f"flow.{name}" not in refused  # one message per bad value
    ]
  if changed("time_eps") and sampling_interval(flow_config, sampler) == (1.0, 0.0):
    problems.append(
      f"flow.time_eps={flow_config.time_eps} is unused: flow.prediction="
      f"{flow_config.prediction!r} with sampling.sampler={sampler!r} has no singular end."
    )
  if config.data.dataset == "reflow" and config.data.random_flip:
    problems.append(
      "data.random_flip=True would flip a reflow pair's image but not its noise: set it False."
    )
  if sampler in (*flow.SOLVERS, "sde") and not config.sampling.num_steps:
    problems.append(
      f"config.family='flow' integrates on a fixed grid: sampling.num_steps must be >= 1, not "
      f"{config.sampling.num_steps}."
    )
  why = f"the velocity of {config.data.num_channels} data channels"
  problems += base.unet_problems(
    config, config.data.num_channels, why, networks=base.IMAGE_NETWORKS
  )
  return problems + base.no_guidance_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  model, flow_config, sampling_config = models.get_model(config.model), config.flow, config.sampling
  path, time_scale, prediction = flow_config.path, flow_config.time_scale, flow_config.prediction
  sampler = sampling_config.sampler
  t_start, t_end = sampling_interval(flow_config, sampler)
  contexts = gaussian.cross_attention(config)  # cross-attention contexts, where model.context_dim
  continuous_data = latent.latent_workdir(config) is not None

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    t = flow.sample_t(
      keys.t, x0.shape[0], flow_config.t_sampling, flow_config.logit_mean, flow_config.logit_std
    )
    # a reflow pair's noise (data.dataset="reflow"), else independent of the image
    noise = batch.get("noise")
    return {
      "t": t,
      "noise": jax.random.normal(keys.noise, x0.shape, x0.dtype) if noise is None else noise,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": t,
      "labels": base.conditioning_labels(
        keys.labels, batch, config.model, config.training.label_dropout
      ),
      "context": contexts.of_batch(keys, batch),
    }

  def loss(params, batch, draws, dropout_rng):
    """‖F_θ(x_t, t) - F‖² per example, the mean over its elements, for the target F of
    flow.prediction (v: conditional flow matching; x0 or ε: SiT's unweighted losses)."""
    x0, t, noise = batch["image"], draws["t"], draws["noise"]
    x_t = flow.interpolate(x0, noise, t, path)
    out = model.apply(
      params,
      x_t,
      time_scale * t,
      draws["labels"],
      draws["context"],
      **base.apply_kwargs(dropout_rng),
    )
    squared = (out - flow.target(prediction, x0, noise, t, path)) ** 2
    return jnp.mean(squared, axis=tuple(range(1, x0.ndim)))

  def velocity_fn(params, cond, controls):
    """v(x, t) given `cond`'s label and contexts, guided towards them where
    sampling.guidance_scale is on ((1 + w) v(x, t, y) - w v(x, t, ∅); guidance_rescale on v)."""
    scale = {"guidance_scale": sampling_config.guidance_scale, **(controls or {})}

    def given(y, conditions):
      def velocity(x, t):
        out = model.apply(params, x, time_scale * t, y, conditions["context"])
        return flow.to_velocity(prediction, out, x, t, path)

      return velocity

    return gaussian.free_guidance(
      given,
      cond or base.Cond(),
      (contexts,),
      sampling_config,
      scale["guidance_scale"],
      config.data.num_channels,
    )

  def grid(num_steps: int) -> np.ndarray:
    return np.clip(flow.timesteps(num_steps, flow_config.shift), t_end, t_start)

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    del guide
    if sampler == "ode":
      raise ValueError(
        f"Editing runs on the samplers {', '.join(flow.SOLVERS)} and sde, not sampling.sampler="
        f"{sampling_config.sampler!r} (an adaptive solver without a fixed grid): set "
        "--config.sampling.sampler (heun: the same ODE on a grid)."
      )
    ts = grid(sampling_config.num_steps)
    with jax.ensure_compile_time_eval():
      scale, noise_std, _, _ = (np.asarray(c) for c in flow.coefficients(ts, path))

    def trajectory(params, cond=None, guide_params=None, controls=None):
      del guide_params
      v, times = velocity_fn(params, cond, controls), jnp.asarray(ts)

      def step(x, i, key):
        if sampler == "sde":  # the last step without noise: SiT's "Mean"
          noise, diffusion = i < len(ts) - 2, flow_config.sde_diffusion
          args = (path, diffusion, flow_config.sde_norm, noise)
          return flow.sde_step(v, x, times[i], times[i + 1], key, *args)
        return flow.step(v, x, times[i], times[i + 1], sampler)

      return sampling.Trajectory(
        scale, noise_std, sampling.memoryless(step), np.arange(len(ts) - 1), name="flow"
      )

    return trajectory

  def make_sampler(batch_size: int, progress: bool = False, guide=None, workdir=None):
    del workdir
    shape = base.sample_shape(batch_size, config.data)
    clip = latent.clip_samples(config)
    if sampler != "ode":
      return base.trajectory_sampler(make_trajectory(guide), shape, progress, clip)

    def sample(params, rng, cond=None, guide_params=None, controls=None, x_T=None):
      del guide_params
      # the grid samplers' prior draw, so that "ode" and "heun" start from the same noise
      x_1 = sampling.standard_normal_prior()(rng, shape) if x_T is None else x_T
      tolerance = sampling_config.ode_tolerance
      v = velocity_fn(params, cond, controls)
      return clip(flow.sample_adaptive(v, x_1, tolerance, tolerance, (t_start, t_end))[0])

    return sample

  def make_latent_codec(num_steps: int):
    """The flow's ODE on `num_steps` times: data -> noise (encode) and back (decode), by the
    configured grid solver (Heun for the adaptive "ode" and the SDE)."""
    ts = grid(num_steps)
    solver = sampler if sampler in flow.SOLVERS else "heun"

    def encode(params, x0, cond=None):
      return flow.sample(velocity_fn(params, cond, None), x0, ts[::-1], solver)

    def decode(params, z, cond=None):
      return flow.sample(velocity_fn(params, cond, None), z, ts, solver)

    return encode, decode

  def bits_per_dim(params, x0, rng, cond=None):
    """Bits/dim of x0 under the conditional (unguided) flow: the dequantised bits/dim of its 8-bit
    images, or the density of latents."""
    v = velocity_fn(params, cond, {"guidance_scale": 0.0})
    t_range = sampling_interval(flow_config, "ode")[::-1]  # the ODE's own, whatever the sampler
    log_likelihood = lambda y, key: flow.log_likelihood(v, y, key, t_range=t_range)
    return {"bpd": sde.data_bits_per_dim(log_likelihood, x0, rng, continuous_data)}

  return base.Family(
    name="flow",
    model=model,
    init_params=lambda rng: contexts.init(model, rng, config.data),
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    make_trajectory=make_trajectory,
    make_latent_codec=make_latent_codec,
    sample_controls=("guidance_scale",),
    conditions=gaussian.label_and_contexts(config, contexts),
    bits_per_dim=bits_per_dim,
  )
