r"""Sampling steps/s: this project's compiled ancestral loop (one `lax.scan`) against diffusers'
DDPM pipeline loop (a Python loop of UNet2DModel + DDPMScheduler.step) with the same CIFAR-10 U-Net,
measured in one run.

  pip install -r requirements.txt -e ".[bench]"
  python -m benchmarks.sampling_throughput [--batch=8] [--steps=10] [--repeats=5] \
      [--conv_impl=winograd]
"""

from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import torch_reference
from benchmarks.timing import (
  interleaved_seconds,
  machine_description,
  setup_host_memory,
  speedup_summary,
)
from configs import ddpm_cifar10
from ddpm_jax import diffusion, models, sampling, schedules

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "Images sampled at once.")
flags.DEFINE_integer("steps", 10, "Sampling steps (respaced from T = 1000).")
flags.DEFINE_integer(
  "repeats", 5, "Timed sampling runs of each, JAX and PyTorch in turns; medians are reported."
)
flags.DEFINE_string(
  "conv_impl", "auto", "Convolution implementation of the JAX model (auto | xla | winograd)."
)


def jax_sampler(batch: int, steps: int):
  """One call samples a batch with the compiled ancestral loop and blocks until done."""
  config = ddpm_cifar10.get_config()
  config.model.conv_impl = FLAGS.conv_impl
  model = models.get_model(config.model)
  d = diffusion.GaussianDiffusion.from_betas(
    schedules.get_beta_schedule("linear", 1000), var_type="fixed_large"
  )
  params = jax.jit(model.init)(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)
  )
  sample = jax.jit(
    lambda params, rng: sampling.ddpm_sample(
      d, lambda x, t: model.apply(params, x, t), rng, (batch, 32, 32, 3), num_steps=steps
    )
  )
  return lambda: sample(params, jax.random.key(2)).block_until_ready()


def torch_sampler(batch: int, steps: int):
  """One call samples a batch with the DDPMPipeline's loop."""
  from diffusers import DDPMScheduler
  import torch

  device = torch_reference.torch_device()
  unet = torch_reference.ddpm_cifar10_unet(device).eval()
  scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
  scheduler.set_timesteps(steps)

  def loop():
    x = torch.randn(batch, 3, 32, 32, device=device)
    with torch.no_grad():
      for t in scheduler.timesteps:  # the DDPMPipeline's loop
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    torch_reference.synchronize(device)

  return loop


def main(argv):
  del argv
  setup_host_memory()
  print(f"machine: {machine_description()}", flush=True)
  print(f"devices: {jax.devices()}  batch {FLAGS.batch}  {FLAGS.steps} steps", flush=True)
  seconds = interleaved_seconds(
    {
      "jax": jax_sampler(FLAGS.batch, FLAGS.steps),
      "torch": torch_sampler(FLAGS.batch, FLAGS.steps),
    },
    FLAGS.repeats,
  )
  print(f"JAX lax.scan loop:      {FLAGS.steps / np.median(seconds['jax']):6.2f} steps/s")
  print(
    f"diffusers DDPM loop:    {FLAGS.steps / np.median(seconds['torch']):6.2f} steps/s   JAX / "
    "PyTorch = "
    f"{speedup_summary(seconds['torch'], seconds['jax'])}"
  )


if __name__ == "__main__":
  app.run(main)
