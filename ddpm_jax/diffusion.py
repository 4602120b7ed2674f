"""Gaussian diffusion of DDPM (Ho et al. 2020) and Improved DDPM (Nichol & Dhariwal 2021) as pure
functions.

`GaussianDiffusion` is a pytree of schedule arrays (float32, derived once from float64 βs) plus
static names of the parameterisation; pass it into jitted functions as an argument. Timesteps are
integer indices t ∈ {0, …, T-1}; index t is the paper's step t + 1, so ᾱ_{t-1} at t = 0 is 1 and β̃
at t = 0 is 0.

A model function is `model_fn(x_t, t) -> output` where `t` are original (un-respaced) timestep
indices; functions here call it with `d.timestep_map[t]`. With a learned variance the output has 2·C
channels: the first C parameterise the mean, the last C the variance.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import losses, schedules
from ddpm_jax.runtime.errors import check_batch

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSS_TYPES = ("mse", "hybrid", "kl", "rescaled_kl")
LEARNED_VAR_TYPES = ("learned", "learned_range")
# L_0's decoder p_θ(x0 | x1): 8-bit pixels' bins (DDPM eq. 13), or the density of continuous data
# (an autoencoder's latents, embeddings)
DECODERS = ("discretized", "continuous")
# λ of the hybrid loss L_simple + λ·T·L_t (Improved DDPM §3.1; T·L_t estimates L_vlb).
HYBRID_VB_WEIGHT = 1e-3


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"Unknown {kind} {value!r}; valid: {', '.join(choices)}.")


@flax.struct.dataclass
class GaussianDiffusion:
  """Schedule-derived arrays, each float32 [T], computed in float64 by `from_betas`."""

  betas: Array  # β_t
  alphas_cumprod: Array  # ᾱ_t = Π_{s≤t} (1 - β_s)
  alphas_cumprod_prev: Array  # ᾱ_{t-1}, with ᾱ_{-1} = 1
  sqrt_alphas_cumprod: Array  # √ᾱ_t
  one_minus_alphas_cumprod: Array  # 1 - ᾱ_t
  sqrt_one_minus_alphas_cumprod: Array  # √(1 - ᾱ_t)
  log_one_minus_alphas_cumprod: Array  # log(1 - ᾱ_t)
  sqrt_recip_alphas_cumprod: Array  # 1/√ᾱ_t
  sqrt_recipm1_alphas_cumprod: Array  # √(1/ᾱ_t - 1)
  posterior_variance: Array  # β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)   (DDPM eq. 7); 0 at t = 0
  posterior_log_variance_clipped: Array  # log β̃_t with the t = 0 entry replaced by log β̃ at t = 1
  posterior_mean_coef1: Array  # √ᾱ_{t-1} β_t / (1 - ᾱ_t)                (DDPM eq. 7, x0)
  posterior_mean_coef2: Array  # √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)           (DDPM eq. 7, x_t)
  log_betas: Array  # log β_t
  fixed_large_log_variance: Array  # log β_t with the t = 0 entry β̃ at t = 1
  timestep_map: Array  # int32 [T]: original timestep index of each step (respacing)
  mean_type: str = flax.struct.field(pytree_node=False, default="eps")
  var_type: str = flax.struct.field(pytree_node=False, default="fixed_small")
  loss_type: str = flax.struct.field(pytree_node=False, default="mse")
  decoder: str = flax.struct.field(pytree_node=False, default="discretized")
  # the float64 βs the arrays were computed from, a numpy leaf (float32 once traced): `respace`
  # starts from them on the host
  betas_float64: np.ndarray | None = None

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  @property
  def learned_variance(self) -> bool:
    return self.var_type in LEARNED_VAR_TYPES

  @classmethod
  def from_betas(
    cls,
    betas,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    loss_type: str = "mse",
    timestep_map=None,
    decoder: str = "discretized",
  ) -> "GaussianDiffusion":
    """Builds every derived array in float64 numpy and casts each once to float32."""
    _check_choice("mean_type", mean_type, MEAN_TYPES)
    _check_choice("var_type", var_type, VAR_TYPES)
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    _check_choice("decoder", decoder, DECODERS)
    betas = schedules.check_betas(betas)
    num_timesteps = betas.shape[0]
    if timestep_map is None:
      timestep_map = np.arange(num_timesteps)
    timestep_map = np.asarray(timestep_map)
    if timestep_map.shape != (num_timesteps,):
      raise ValueError(
        f"timestep_map must have shape ({num_timesteps},), got {timestep_map.shape}."
      )

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    one_minus_alphas_cumprod = -np.expm1(np.cumsum(np.log1p(-betas)))  # 1 - ᾱ without cancellation
    one_minus_alphas_cumprod_prev = np.append(0.0, one_minus_alphas_cumprod[:-1])
    posterior_variance = betas * one_minus_alphas_cumprod_prev / one_minus_alphas_cumprod
    # β̃ at t = 0 is 0; its log is clipped to the next entry (with T = 1 there is none: use β).
    first_log_variance = np.log(posterior_variance[1] if num_timesteps > 1 else betas[0])
    posterior_log_variance_clipped = np.append(first_log_variance, np.log(posterior_variance[1:]))
    with np.errstate(divide="ignore"):  # ᾱ_T = 0 (zero terminal SNR): 1/√ᾱ_T = ∞, never used
      recip_alphas_cumprod = 1.0 / alphas_cumprod
    arrays = dict(
      betas=betas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      one_minus_alphas_cumprod=one_minus_alphas_cumprod,
      sqrt_one_minus_alphas_cumprod=np.sqrt(one_minus_alphas_cumprod),
      log_one_minus_alphas_cumprod=np.log(one_minus_alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(recip_alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(one_minus_alphas_cumprod * recip_alphas_cumprod),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=posterior_log_variance_clipped,
      posterior_mean_coef1=np.sqrt(alphas_cumprod_prev) * betas / one_minus_alphas_cumprod,
      posterior_mean_coef2=np.sqrt(alphas)
      * one_minus_alphas_cumprod_prev
      / one_minus_alphas_cumprod,
      log_betas=np.log(betas),
      fixed_large_log_variance=np.append(first_log_variance, np.log(betas[1:])),
    )
    arrays = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()}
    return cls(
      **arrays,
      timestep_map=jnp.asarray(timestep_map, dtype=jnp.int32),
      mean_type=mean_type,
      var_type=var_type,
      loss_type=loss_type,
      decoder=decoder,
      betas_float64=betas,
    )


def respace(d: GaussianDiffusion, use_timesteps: Sequence[int]) -> GaussianDiffusion:
  """The diffusion on the kept steps only (Improved DDPM §4): β'_i = 1 - ᾱ_{t_i} / ᾱ_{t_{i-1}}.

  Runs on the host. ᾱ is recomputed in float64 from the float64 βs `d` was built from (as the
  reference respaces), not from its float32 copy.
  """
  use_timesteps = np.asarray(sorted(set(int(t) for t in use_timesteps)), dtype=np.int64)
  num_timesteps = d.num_timesteps
  if use_timesteps.size == 0 or use_timesteps[0] < 0 or use_timesteps[-1] >= num_timesteps:
    raise ValueError(f"use_timesteps must be a non-empty subset of range({num_timesteps}).")
  exact = isinstance(d.betas_float64, np.ndarray) and d.betas_float64.dtype == np.float64
  betas = d.betas_float64 if exact else np.asarray(d.betas, dtype=np.float64)
  alphas_cumprod = np.cumprod(1.0 - betas)[use_timesteps]
  betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
  return GaussianDiffusion.from_betas(
    betas,
    d.mean_type,
    d.var_type,
    d.loss_type,
    timestep_map=np.asarray(d.timestep_map)[use_timesteps],
    decoder=d.decoder,
  )


def extract(a: Array, t: Array, ndim: int) -> Array:
  """a[t] shaped [B, 1, …, 1] to broadcast against an array of rank `ndim`."""
  return a[t].reshape(t.shape + (1,) * (ndim - 1))


# --------------------------------------------------------------------------------------------------
# Forward process q.


def q_mean_variance(d: GaussianDiffusion, x0: Array, t: Array) -> tuple[Array, Array, Array]:
  """q(x_t | x0) = N(√ᾱ_t x0, (1 - ᾱ_t) I)  (DDPM eq. 4) -> (mean, variance, log_variance)."""
  check_batch(t, x0=x0)
  mean = extract(d.sqrt_alphas_cumprod, t, x0.ndim) * x0
  variance = jnp.broadcast_to(extract(d.one_minus_alphas_cumprod, t, x0.ndim), x0.shape)
  log_variance = jnp.broadcast_to(extract(d.log_one_minus_alphas_cumprod, t, x0.ndim), x0.shape)
  return mean, variance, log_variance


def q_sample(d: GaussianDiffusion, x0: Array, t: Array, noise: Array) -> Array:
  """x_t = √ᾱ_t x0 + √(1 - ᾱ_t) ε  (DDPM eq. 4).  x0, noise: [B, H, W, C]; t: [B] int."""
  check_batch(t, x0=x0, noise=noise)
  return (
    extract(d.sqrt_alphas_cumprod, t, x0.ndim) * x0
    + extract(d.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
  )


def q_posterior_mean_variance(
  d: GaussianDiffusion, x0: Array, x_t: Array, t: Array
) -> tuple[Array, Array, Array]:
  """q(x_{t-1} | x_t, x0) = N(μ̃_t, β̃_t I)  (DDPM eqs. 6–7).
  -> (mean, variance, log_variance_clipped)."""
  check_batch(t, x_t=x_t, x0=x0)
  mean = (
    extract(d.posterior_mean_coef1, t, x_t.ndim) * x0
    + extract(d.posterior_mean_coef2, t, x_t.ndim) * x_t
  )
  variance = jnp.broadcast_to(extract(d.posterior_variance, t, x_t.ndim), x_t.shape)
  log_variance = jnp.broadcast_to(extract(d.posterior_log_variance_clipped, t, x_t.ndim), x_t.shape)
  return mean, variance, log_variance


# --------------------------------------------------------------------------------------------------
# Conversions between the parameterisations: x_t = √ᾱ x0 + √(1-ᾱ) ε and v = √ᾱ ε - √(1-ᾱ) x0.


def predict_x0_from_eps(d: GaussianDiffusion, x_t: Array, t: Array, eps: Array) -> Array:
  """x0 = x_t/√ᾱ_t - √(1/ᾱ_t - 1) ε  (DDPM eq. 4 solved for x0)."""
  return (
    extract(d.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
    - extract(d.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
  )


def predict_eps_from_x0(d: GaussianDiffusion, x_t: Array, t: Array, x0: Array) -> Array:
  """ε = (x_t - √ᾱ_t x0) / √(1 - ᾱ_t)  (finite at ᾱ_t = 0 too)."""
  return (x_t - extract(d.sqrt_alphas_cumprod, t, x_t.ndim) * x0) / extract(
    d.sqrt_one_minus_alphas_cumprod, t, x_t.ndim
  )


def get_v(d: GaussianDiffusion, x0: Array, eps: Array, t: Array) -> Array:
  """v = √ᾱ_t ε - √(1 - ᾱ_t) x0  (Salimans & Ho 2022, progressive distillation §4)."""
  return (
    extract(d.sqrt_alphas_cumprod, t, x0.ndim) * eps
    - extract(d.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
  )


def predict_x0_from_v(d: GaussianDiffusion, x_t: Array, t: Array, v: Array) -> Array:
  """x0 = √ᾱ_t x_t - √(1 - ᾱ_t) v."""
  return (
    extract(d.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
    - extract(d.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v
  )


def predict_eps_from_v(d: GaussianDiffusion, x_t: Array, t: Array, v: Array) -> Array:
  """ε = √(1 - ᾱ_t) x_t + √ᾱ_t v."""
  return (
    extract(d.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
    + extract(d.sqrt_alphas_cumprod, t, x_t.ndim) * v
  )


# --------------------------------------------------------------------------------------------------
# Reverse process p_θ.


def split_model_output(
  d: GaussianDiffusion, model_output: Array, x_t: Array
) -> tuple[Array, Array | None]:
  """-> (mean parameterisation [.., C], variance parameter [.., C] or None for fixed variances)."""
  channels = x_t.shape[-1]
  expected = 2 * channels if d.learned_variance else channels
  if model_output.shape[:-1] != x_t.shape[:-1] or model_output.shape[-1] != expected:
    raise ValueError(
      f"With var_type={d.var_type!r} the model output must have shape "
      f"{x_t.shape[:-1] + (expected,)},"
      f" got {model_output.shape}."
    )
  if d.learned_variance:
    return model_output[..., :channels], model_output[..., channels:]
  return model_output, None


def _model_variance(
  d: GaussianDiffusion, var_output: Array | None, x_t: Array, t: Array
) -> tuple[Array, Array]:
  """Σ_θ(x_t, t) -> (variance, log_variance), each broadcast to x_t's shape."""
  if d.var_type == "learned":
    log_variance = var_output
    return jnp.exp(log_variance), log_variance
  if d.var_type == "learned_range":
    # Improved DDPM eq. 15: Σ = exp(v' log β_t + (1 - v') log β̃_t) with v' = (v + 1)/2.
    frac = (var_output + 1.0) / 2.0
    log_variance = frac * extract(d.log_betas, t, x_t.ndim) + (1.0 - frac) * extract(
      d.posterior_log_variance_clipped, t, x_t.ndim
    )
    return jnp.exp(log_variance), log_variance
  # σ² = β̃_t; the variance itself is 0 at t = 0, its log is clipped.
  if d.var_type == "fixed_small":
    variance, log_variance = d.posterior_variance, d.posterior_log_variance_clipped
  # fixed_large: σ² = β_t, with β̃ at t = 1 for the first step so that the decoder stays sharp.
  else:
    log_variance = d.fixed_large_log_variance
    variance = jnp.exp(log_variance)
  return (
    jnp.broadcast_to(extract(variance, t, x_t.ndim), x_t.shape),
    jnp.broadcast_to(extract(log_variance, t, x_t.ndim), x_t.shape),
  )


def predict_x0(d: GaussianDiffusion, mean_output: Array, x_t: Array, t: Array) -> Array:
  """x̂0 from the mean parameterisation given by `d.mean_type`."""
  if d.mean_type == "eps":
    return predict_x0_from_eps(d, x_t, t, mean_output)
  if d.mean_type == "v":
    return predict_x0_from_v(d, x_t, t, mean_output)
  return mean_output


def p_mean_variance(
  d: GaussianDiffusion, model_output: Array, x_t: Array, t: Array, clip_denoised: bool = False
) -> dict[str, Array]:
  """p_θ(x_{t-1} | x_t) = N(μ̃_t(x̂0, x_t), Σ_θ) with x̂0 from the model (DDPM eq. 11 via x̂0).

  -> dict(mean, variance, log_variance, pred_x0); `clip_denoised` clips x̂0 to [-1, 1] first.
  """
  check_batch(t, x_t=x_t)
  if jnp.shape(model_output)[:-1] != jnp.shape(x_t)[:-1]:
    raise ValueError(
      f"model_output {jnp.shape(model_output)} must match x_t {jnp.shape(x_t)} but for channels."
    )
  mean_output, var_output = split_model_output(d, model_output, x_t)
  variance, log_variance = _model_variance(d, var_output, x_t, t)
  pred_x0 = predict_x0(d, mean_output, x_t, t)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(d, pred_x0, x_t, t)
  return dict(mean=mean, variance=variance, log_variance=log_variance, pred_x0=pred_x0)


# --------------------------------------------------------------------------------------------------
# Variational bound, in bits per dimension.


def _vb_terms(
  d: GaussianDiffusion, model_output: Array, x0: Array, x_t: Array, t: Array, clip_denoised: bool
) -> tuple[Array, dict[str, Array]]:
  true_mean, _, true_log_variance = q_posterior_mean_variance(d, x0, x_t, t)
  out = p_mean_variance(d, model_output, x_t, t, clip_denoised)
  # L_{t-1} = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t)) for t > 0  (DDPM eq. 5).
  kl = losses.mean_flat(
    losses.normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
  )
  # L_0 = -log p_θ(x0 | x1): the discretised decoder (DDPM eq. 13), or continuous data's density.
  log_likelihood = (
    losses.gaussian_log_likelihood
    if d.decoder == "continuous"
    else losses.discretized_gaussian_log_likelihood
  )
  nll = -losses.mean_flat(log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]))
  return jnp.where(t == 0, nll, kl) / np.log(2.0), out


def vb_terms_bpd(
  d: GaussianDiffusion,
  model_output: Array,
  x0: Array,
  x_t: Array,
  t: Array,
  clip_denoised: bool = False,
) -> Array:
  """L_t of the VLB for each example, in bits/dim: KL for t > 0, decoder NLL at t = 0. -> [B]."""
  check_batch(t, x0=x0, x_t=x_t)
  return _vb_terms(d, model_output, x0, x_t, t, clip_denoised)[0]


def prior_bpd(d: GaussianDiffusion, x0: Array) -> Array:
  """L_T = KL(q(x_T | x0) ‖ N(0, I)) in bits/dim -> [B]. No parameters; ≈ 0 for a good schedule."""
  t = jnp.full((x0.shape[0],), d.num_timesteps - 1, dtype=jnp.int32)
  mean, _, log_variance = q_mean_variance(d, x0, t)
  return losses.mean_flat(losses.normal_kl(mean, log_variance, 0.0, 0.0)) / np.log(2.0)


def calc_bpd_loop(
  d: GaussianDiffusion, model_fn: ModelFn, x0: Array, rng: Array, clip_denoised: bool = False
) -> dict[str, Array]:
  """The whole VLB L_T + Σ_t L_t of a batch, one `lax.scan` over all T steps.

  Noise for step t is drawn from `fold_in(rng, t)`. -> dict(total_bpd [B], prior_bpd [B], vb [B, T],
  x0_mse [B, T], mse [B, T]); `mse` is the ε-prediction error, `x0_mse` that of x̂0, per step.
  """
  batch = x0.shape[0]

  def step(carry, t):
    t_b = jnp.full((batch,), t, dtype=jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, t), x0.shape, x0.dtype)
    x_t = q_sample(d, x0, t_b, noise)
    vb, out = _vb_terms(d, model_fn(x_t, d.timestep_map[t_b]), x0, x_t, t_b, clip_denoised)
    eps = predict_eps_from_x0(d, x_t, t_b, out["pred_x0"])
    return carry, (
      vb,
      losses.mean_flat((out["pred_x0"] - x0) ** 2),
      losses.mean_flat((eps - noise) ** 2),
    )

  _, (vb, x0_mse, mse) = jax.lax.scan(step, None, jnp.arange(d.num_timesteps))  # each [T, B]
  prior = prior_bpd(d, x0)
  return dict(
    total_bpd=jnp.sum(vb, axis=0) + prior, prior_bpd=prior, vb=vb.T, x0_mse=x0_mse.T, mse=mse.T
  )


# --------------------------------------------------------------------------------------------------
# Training losses.


def loss_variance_problems(var_type: str, loss_type: str) -> list[str]:
  """Why `loss_type` cannot train the variance `var_type` (empty when it can)."""
  learned = var_type in LEARNED_VAR_TYPES
  if loss_type == "hybrid" and not learned:
    return [
      "loss_type='hybrid' needs a learned var_type ('learned' or 'learned_range'), got "
      f"{var_type!r}: with a fixed variance its VLB term has no gradient; use loss_type='mse'."
    ]
  return []


def _check_loss_variance(d: GaussianDiffusion) -> None:
  problems = loss_variance_problems(d.var_type, d.loss_type)
  if problems:
    raise ValueError(problems[0])


def training_losses(
  d: GaussianDiffusion, model_fn: ModelFn, x0: Array, t: Array, noise: Array
) -> dict[str, Array]:
  """Per-example training losses at timesteps t with noise ε -> dict(loss [B], mse [B], vb [B] where
  used).

  mse: L_simple = ‖target - model‖² with target ε, x0 or v  (DDPM eq. 14); with a learned Σ,
    L_simple + L_t (guided-diffusion's LossType.MSE), the mean stop-gradiented inside L_t.
  hybrid: L_simple + λ·T·L_t, λ = 0.001 (Improved DDPM eq. 16; guided-diffusion's RESCALED_MSE).
  kl: L_t in bits/dim; rescaled_kl: T·L_t.
  """
  check_batch(t, x0=x0, noise=noise)
  _check_loss_variance(d)
  x_t = q_sample(d, x0, t, noise)
  model_output = model_fn(x_t, d.timestep_map[t])
  if d.loss_type in ("kl", "rescaled_kl"):
    vb = vb_terms_bpd(d, model_output, x0, x_t, t)
    loss = vb * d.num_timesteps if d.loss_type == "rescaled_kl" else vb
    return dict(loss=loss, vb=vb)

  mean_output, var_output = split_model_output(d, model_output, x_t)
  target = {"eps": noise, "x0": x0, "v": get_v(d, x0, noise, t)}[d.mean_type]
  terms = dict(mse=losses.mean_flat((target - mean_output) ** 2))
  if d.learned_variance:
    # L_t trains only Σ_θ: the mean is learned from L_simple alone.
    frozen_output = jnp.concatenate([jax.lax.stop_gradient(mean_output), var_output], axis=-1)
    vb_weight = HYBRID_VB_WEIGHT * d.num_timesteps if d.loss_type == "hybrid" else 1.0
    terms["vb"] = vb_terms_bpd(d, frozen_output, x0, x_t, t) * vb_weight
    terms["loss"] = terms["mse"] + terms["vb"]
  else:
    terms["loss"] = terms["mse"]
  return terms


# --------------------------------------------------------------------------------------------------
# Timestep sampling: uniform, or importance-sampled by the loss history (Improved DDPM §3.3).


@flax.struct.dataclass
class LossHistory:
  """The last `history_per_term` values of L_t for every t, as arrays so it can live in the train
  state."""

  losses: Array  # [T, history_per_term] float32
  counts: Array  # [T] int32, number of filled entries (≤ history_per_term)


def init_loss_history(num_timesteps: int, history_per_term: int = 10) -> LossHistory:
  return LossHistory(
    losses=jnp.zeros((num_timesteps, history_per_term), jnp.float32),
    counts=jnp.zeros((num_timesteps,), jnp.int32),
  )


def update_loss_history(history: LossHistory, t: Array, step_losses: Array) -> LossHistory:
  """Appends each (t_i, L_i) in batch order; a full row drops its oldest entry."""
  size = history.losses.shape[1]

  def push(h: LossHistory, t_and_loss):
    t_i, loss_i = t_and_loss
    row, count = h.losses[t_i], h.counts[t_i]
    row = jnp.where(
      count >= size,
      jnp.roll(row, -1).at[-1].set(loss_i),
      row.at[jnp.minimum(count, size - 1)].set(loss_i),
    )
    return LossHistory(
      h.losses.at[t_i].set(row), h.counts.at[t_i].set(jnp.minimum(count + 1, size))
    ), None

  history, _ = jax.lax.scan(
    push, history, (t, jax.lax.stop_gradient(step_losses).astype(jnp.float32))
  )
  return history


def timestep_probs(history: LossHistory, uniform_prob: float = 1e-3) -> Array:
  """p_t ∝ √E[L_t²] mixed with the uniform distribution; uniform until every row is full. -> [T]."""
  num_timesteps = history.losses.shape[0]
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps)
  rms = jnp.sqrt(jnp.mean(history.losses**2, axis=-1))
  weighted = rms / jnp.sum(rms) * (1.0 - uniform_prob) + uniform_prob / num_timesteps
  warm = jnp.all(history.counts >= history.losses.shape[1])
  return jnp.where(warm, weighted, uniform)


def sample_timesteps(
  rng: Array, batch_size: int, num_timesteps: int, history: LossHistory | None = None
) -> tuple[Array, Array]:
  """t ~ p (uniform without a history) -> (t [B] int32, weights [B]) with weights 1/(T p_t), so that
  E[weight · L_t] = (1/T) Σ_t L_t: the weighted loss stays an unbiased estimate of the uniform
  average."""
  if history is None:
    t = jax.random.randint(rng, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
    return t, jnp.ones((batch_size,), jnp.float32)
  probs = timestep_probs(history)
  t = jax.random.choice(rng, num_timesteps, (batch_size,), p=probs).astype(jnp.int32)
  return t, 1.0 / (num_timesteps * probs[t])


# --------------------------------------------------------------------------------------------------
# Progressive distillation (Salimans & Ho 2022, Algorithm 2) on a discrete schedule. An x0 function
# `x0_fn(z, k) -> x̂` is a model's x̂0 at original timesteps k [B] ≥ 0 (`predict_x0` of its output).
X0Fn = Callable[[Array, Array], Array]


def trailing_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
  """round(T - iT/N) - 1, i < N, sorted: N steps ending at T - 1 (Lin et al. 2024, Table 2)."""
  if not 0 < num_steps <= num_timesteps:
    raise ValueError(f"Cannot take {num_steps} trailing steps out of {num_timesteps}.")
  return sorted(
    {round(num_timesteps - i * num_timesteps / num_steps) - 1 for i in range(num_steps)}
  )


def distillation_grid(num_timesteps: int, num_steps: int) -> np.ndarray:
  """The timesteps of grid points j = 0 … M (M = num_steps): -1 (the data itself), then the
  trailing spacing's M steps (`trailing_timesteps`, the grid of DDIM with
  sampling.timestep_spacing="trailing"). For N dividing M the N-step grid is every (M/N)-th point,
  so that a student of N steps starts and lands where its teacher's 2N steps do."""
  return np.asarray([-1, *trailing_timesteps(num_timesteps, num_steps)])


def alpha_sigma(d: GaussianDiffusion, k: Array) -> tuple[Array, Array]:
  """(α_k, σ_k) = (√ᾱ_k, √(1 - ᾱ_k)) at original timesteps k [B]; k = -1: (1, 0), the data."""
  alpha_bar = jnp.where(k >= 0, d.alphas_cumprod[jnp.maximum(k, 0)], 1.0)
  return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def ddim_step_from_x0(x0_hat, z_t, alpha_t, sigma_t, alpha_s, sigma_s) -> Array:
  """z_s = α_s x̂ + σ_s (z_t - α_t x̂)/σ_t  (DDIM with η = 0; α, σ [B] broadcast per example)."""
  per = lambda a: losses.expand_to(a, z_t)
  eps_hat = (z_t - per(alpha_t) * x0_hat) / per(sigma_t)
  return per(alpha_s) * x0_hat + per(sigma_s) * eps_hat


def distillation_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s) -> Array:
  """x̃ = (z_s - (σ_s/σ_t) z_t) / (α_s - (σ_s/σ_t) α_t): the x̂ whose one DDIM step from z_t lands
  on z_s  (Salimans & Ho, Algorithm 2)."""
  per = lambda a: losses.expand_to(a, z_t)
  ratio = per(sigma_s / sigma_t)
  return (z_s - ratio * z_t) / (per(alpha_s) - ratio * per(alpha_t))


def truncated_snr_weight(alpha: Array, sigma: Array) -> Array:
  """w = max(α²/σ², 1)  (Salimans & Ho §4, "truncated SNR"): the x-space loss weight. -> [B]."""
  return jnp.maximum(alpha**2 / sigma**2, 1.0)


def two_teacher_steps(
  d: GaussianDiffusion, teacher_x0_fn: X0Fn, z_t: Array, k_t: Array, k_mid: Array, k_s: Array
) -> Array:
  """z_s after the teacher's DDIM steps k_t -> k_mid -> k_s from z_t (k [B])."""
  (a_t, s_t), (a_mid, s_mid), (a_s, s_s) = (alpha_sigma(d, k) for k in (k_t, k_mid, k_s))
  z_mid = ddim_step_from_x0(teacher_x0_fn(z_t, k_t), z_t, a_t, s_t, a_mid, s_mid)
  return ddim_step_from_x0(teacher_x0_fn(z_mid, k_mid), z_mid, a_mid, s_mid, a_s, s_s)


def distillation_pair(
  d: GaussianDiffusion,
  teacher_x0_fn: X0Fn,
  x0: Array,
  noise: Array,
  k_t: Array,
  k_mid: Array,
  k_s: Array,
) -> tuple[Array, Array]:
  """(z_t, x̃): z_t = α_t x0 + σ_t ε and the target x̃ of two teacher steps k_t -> k_mid -> k_s
  from it  (Salimans & Ho, Algorithm 2)."""
  alpha_t, sigma_t = alpha_sigma(d, k_t)
  z_t = losses.expand_to(alpha_t, x0) * x0 + losses.expand_to(sigma_t, x0) * noise
  z_s = two_teacher_steps(d, teacher_x0_fn, z_t, k_t, k_mid, k_s)
  return z_t, distillation_target(z_t, z_s, alpha_t, sigma_t, *alpha_sigma(d, k_s))


def progressive_distillation_loss(
  d: GaussianDiffusion, student_x0_fn: X0Fn, z_t: Array, target: Array, k_t: Array
) -> Array:
  """max(SNR_t, 1) ‖x̃ - x̂_η(z_t)‖² per example, the mean over its dimensions (Salimans & Ho,
  Algorithm 2; x̃ a `distillation_pair`'s target, held fixed). -> [B]."""
  error = jax.lax.stop_gradient(target) - student_x0_fn(z_t, k_t)
  return truncated_snr_weight(*alpha_sigma(d, k_t)) * losses.mean_flat(error**2)


def ddim_on_grid(d: GaussianDiffusion, x0_fn: X0Fn, z: Array, timesteps) -> Array:
  """DDIM (η = 0) from z at timesteps[-1] down the increasing original timesteps `timesteps` (a
  `distillation_grid`'s points, the first -1: the data) in one `lax.scan`. -> x [B, ...]."""
  timesteps = jnp.asarray(timesteps, jnp.int32)
  batch = z.shape[0]

  def step(z, pair):
    k_t, k_s = (jnp.full((batch,), k, jnp.int32) for k in pair)
    x0_hat = x0_fn(z, k_t)
    return ddim_step_from_x0(x0_hat, z, *alpha_sigma(d, k_t), *alpha_sigma(d, k_s)), None

  pairs = jnp.stack([timesteps[1:], timesteps[:-1]], axis=1)[::-1]
  return jax.lax.scan(step, z, pairs)[0]
