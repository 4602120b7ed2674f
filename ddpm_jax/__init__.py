"""ddpm_jax: denoising diffusion models in JAX/Flax.

Import the modules you need: `from ddpm_jax import schedules, diffusion, losses, sampling`.
"""

__version__ = "0.1.0"
