"""ddpm_jax: denoising diffusion models in JAX/Flax.

Import the modules you need: `from ddpm_jax import schedules, diffusion, losses, sampling`; a
trained workdir samples in two lines: `pipe = ddpm_jax.load(workdir); images = pipe.sample(16)`.
"""

__version__ = "0.1.0"


def load(workdir: str, config=None):
  """`ddpm_jax.pipeline.load`: the sampling / likelihood pipeline of a workdir."""
  from ddpm_jax import pipeline  # imported on use: `import ddpm_jax` stays light

  return pipeline.load(workdir, config)
