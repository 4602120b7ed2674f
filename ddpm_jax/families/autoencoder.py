"""The KL autoencoder of latent diffusion (Rombach et al. 2022, §3 and appendix G), trained on its
images: a reconstruction term (autoencoder.reconstruction: L1, LDM's, or L2) plus
autoencoder.kl_weight × KL(q(z | x) ‖ N(0, I)) on a posterior sample z, both summed over the example
and divided by its number of pixels (LDM's sums, at a scale the optimiser's learning rates suit),
and with autoencoder.disc_weight > 0 a patch discriminator (pix2pix's PatchGAN, GroupNorm in place
of BatchNorm) in LDM's hinge game with its adaptive weight
λ = ‖∇_w L_rec‖ / (‖∇_w L_G‖ + 1e-4) at the decoder's last layer w. No LPIPS: no perceptual
network can be shipped or converted here (the VGG weights cannot be downloaded).

Both players train in one step of one optimiser on one loss: the generator's term sees the
discriminator's parameters through stop_gradient, the discriminator's term the reconstructions,
so each parameter's gradient is that of its own player's loss. model.name = "autoencoder_kl"
(configs/default.autoencoder_model); it samples nothing, and --mode=eval reports
reconstruction_mse, psnr and latent_std (the std of the posterior means: 1 / latent_std is the
scaling factor that gives the diffusion model unit-variance latents)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import models
from ddpm_jax.families import base
from ddpm_jax.models.autoencoder_kl import downsampling_factor

SAMPLERS = ()  # it generates nothing: the latent families sample, its decoder draws their images
SHARED_DEFAULTS = {"eval.num_fid_samples": 0, "eval.bpd_num_batches": 0}
RECONSTRUCTIONS = {"l1": jnp.abs, "l2": jnp.square}


def default_config() -> ml_collections.ConfigDict:
  autoencoder = ml_collections.ConfigDict()
  autoencoder.reconstruction = "l1"  # "l1" (LDM's) | "l2"
  autoencoder.kl_weight = 1e-6  # LDM's KL-f8 weight
  autoencoder.disc_weight = 0.0  # > 0: the patch discriminator's game (LDM: 0.5)
  autoencoder.disc_channels = 64  # its first layer's width
  autoencoder.disc_layers = 3  # stride-2 layers after the first
  return autoencoder


CONFIG_BLOCKS = {"autoencoder": default_config}
DISCRIMINATOR_FIELDS = ("disc_channels", "disc_layers")  # read where disc_weight > 0
RANGES = {
  "autoencoder.kl_weight": (0, True, None, False),
  "autoencoder.disc_weight": (0, True, None, False),
  "autoencoder.disc_channels": (1, True, None, False),
  "autoencoder.disc_layers": (0, True, None, False),
  "model.num_groups": (1, True, None, False),
  "model.latent_channels": (1, True, None, False),
  "model.scaling_factor": (0, False, None, False),
}


class PatchDiscriminator(nn.Module):
  """pix2pix's PatchGAN: 4×4 convolutions, stride 2 for the first `1 + layers`, LeakyReLU(0.2), one
  logit per patch [B, h, w]; GroupNorm(8) where pix2pix has BatchNorm (no state across steps)."""

  channels: int = 64
  layers: int = 3

  @nn.compact
  def __call__(self, x):
    conv = lambda width, stride: nn.Conv(width, (4, 4), (stride, stride), padding=1)
    h = nn.leaky_relu(conv(self.channels, 2)(x), 0.2)
    for i in range(1, self.layers + 1):
      width = self.channels * min(2**i, 8)
      h = conv(width, 2 if i < self.layers else 1)(h)
      h = nn.leaky_relu(nn.GroupNorm(min(8, width))(h), 0.2)
    return conv(1, 1)(h)[..., 0]


def patch_grid(image_size: int, options) -> int:
  """The side of the discriminator's logit grid: halved by the 1 + layers - 1 stride-2 layers, one
  less after each of the last two (4×4, stride 1, padding 1)."""
  return image_size // 2**options.disc_layers - 2


def validate(config: ml_collections.ConfigDict) -> list[str]:
  model, data, problems = config.model, config.data, []
  if config.autoencoder.reconstruction not in RECONSTRUCTIONS:
    problems.append(
      f"autoencoder.reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, not "
      f"{config.autoencoder.reconstruction!r}."
    )
  if model.get("name") != "autoencoder_kl":
    return problems + [
      "config.family='autoencoder' trains model.name='autoencoder_kl' "
      "(configs/default.autoencoder_model), not "
      f"{model.get('name')!r}."
    ]
  options, defaults = config.autoencoder, default_config()
  if options.disc_weight == 0:  # no discriminator: its shape is nobody's to set
    problems += [
      f"autoencoder.{name}={options[name]} shapes the patch discriminator, which "
      "autoencoder.disc_weight=0 leaves out."
      for name in DISCRIMINATOR_FIELDS
      if options[name] != defaults[name]
    ]
  elif patch_grid(data.image_size, options) < 1:
    problems.append(
      f"autoencoder.disc_weight={options.disc_weight} turns the discriminator on, and "
      f"autoencoder.disc_layers={options.disc_layers} leaves the patch discriminator no patch of "
      f"a {data.image_size}² image: use fewer layers."
    )
  if model.out_channels != data.num_channels:
    problems.append(
      f"model.out_channels={model.out_channels} but the data have {data.num_channels} channels."
    )
  return problems + base.image_data_problems(config) + base.no_likelihood_problems(config)


def kl_divergence(mean, logvar):
  """KL(N(mean, e^logvar) ‖ N(0, I)) summed per example: ½ Σ (μ² + σ² - 1 - log σ²)."""
  terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(terms, axis=tuple(range(1, mean.ndim)))


def build(config: ml_collections.ConfigDict) -> base.Family:
  model, options = models.get_model(config.model), config.autoencoder
  discriminator = PatchDiscriminator(options.disc_channels, options.disc_layers)
  adversarial = options.disc_weight > 0
  factor = downsampling_factor(config.model.block_out_channels)
  size = config.data.image_size
  latent_shape = (size // factor, size // factor, config.model.latent_channels)
  distance = RECONSTRUCTIONS[options.reconstruction]

  def init_params(rng):
    x = jnp.zeros(base.sample_shape(1, config.data))
    params = model.init(rng, x)
    if adversarial:
      params = {**params, "discriminator": discriminator.init(jax.random.fold_in(rng, 1), x)}
    return params

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    batch_size = batch["image"].shape[0]
    return {
      "noise": jax.random.normal(keys.noise, (batch_size, *latent_shape)),
      "weight": base.unweighted(batch_size),
      "t_fraction": jnp.zeros((batch_size,)),  # no noise levels: every draw in the first quartile
    }

  def reconstruct(variables, x, noise):
    """(x̂ decoded from z = mean + σ·noise, the posterior's mean, its logvar); `variables`: the
    autoencoder's {"params": …}."""
    mean, logvar = model.apply(variables, x, method="encode")
    z = mean + jnp.exp(0.5 * logvar) * noise
    return model.apply(variables, z, method="decode"), mean, logvar

  def loss(params, batch, draws, dropout_rng):
    del dropout_rng
    x = batch["image"]
    pixels = np.prod(x.shape[1:])
    per_example = lambda a: jnp.sum(a, axis=tuple(range(1, a.ndim))) / pixels

    def generator_terms(decoder_out_kernel):
      """(L_rec [B], L_G [B]) with the decoder's last kernel as an argument, for its gradients."""
      ae = jax.tree_util.tree_map(lambda a: a, {"params": params["params"]})  # a copy to change
      ae["params"]["decoder"]["conv_out"]["kernel"] = decoder_out_kernel
      x_hat, mean, logvar = reconstruct(ae, x, draws["noise"])
      rec = (
        per_example(distance(x - x_hat)) + options.kl_weight * kl_divergence(mean, logvar) / pixels
      )
      if not adversarial:
        return rec, jnp.zeros_like(rec), x_hat
      frozen = jax.lax.stop_gradient(params["discriminator"])
      return rec, -jnp.mean(discriminator.apply(frozen, x_hat), axis=(1, 2)), x_hat

    kernel = params["params"]["decoder"]["conv_out"]["kernel"]
    rec, generator, x_hat = generator_terms(kernel)
    if not adversarial:
      return rec
    grad_norm = lambda term: jnp.linalg.norm(
      jax.grad(lambda k: jnp.mean(generator_terms(k)[term]))(kernel)
    )
    # LDM's adaptive weight: the adversarial gradient at the last layer scaled to the
    # reconstruction's
    adaptive = jax.lax.stop_gradient(jnp.clip(grad_norm(0) / (grad_norm(1) + 1e-4), 0.0, 1e4))
    logits_real = discriminator.apply(params["discriminator"], x)
    logits_fake = discriminator.apply(params["discriminator"], jax.lax.stop_gradient(x_hat))
    hinge = jnp.mean(nn.relu(1.0 - logits_real), axis=(1, 2)) + jnp.mean(
      nn.relu(1.0 + logits_fake), axis=(1, 2)
    )
    # LDM's: the hinge loss ½(E relu(1 - D(x)) + E relu(1 + D(x̂))) unweighted
    return rec + options.disc_weight * adaptive * generator + 0.5 * hinge

  def reconstruct_mean(params, x):
    """(The reconstruction of x from its posterior mean, that mean)."""
    zero_noise = jnp.zeros((x.shape[0], *latent_shape))
    x_hat, mean, _ = reconstruct({"params": params["params"]}, x, zero_noise)
    return x_hat, mean

  return base.Family(
    name="autoencoder",
    model=model,
    init_params=init_params,
    draw=draw,
    loss=loss,
    reconstruct=reconstruct_mean,
  )
