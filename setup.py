"""ddpm_jax: denoising diffusion models in JAX/Flax. Exact tested versions are pinned in
requirements.txt."""

from setuptools import find_packages, setup

# wheels with libtbbmalloc_proxy
TBB = 'tbb; sys_platform == "linux" and platform_machine == "x86_64"'

setup(
  name="ddpm_jax",
  version="0.1.0",
  description="Denoising diffusion models (DDPM, Improved DDPM, DDIM, ADM, score SDEs, VDM, ARDM) "
  "in JAX/Flax.",
  # configs/ installs too, so that `--config=NAME` and `from configs import NAME` work without a
  # checkout.
  packages=find_packages(include=["ddpm_jax", "ddpm_jax.*", "configs", "configs.*"]),
  package_data={"ddpm_jax.evaluation": ["assets/*.npz"]},  # the shipped digits feature network
  python_requires=">=3.10",
  install_requires=[
    "absl-py",
    "chex",
    "diffrax",  # adaptive ODE solvers for the probability-flow ODE (sde.py)
    "etils[epath]",  # workdir files on local disk or gs:// (as orbax)
    "flax",
    "jax",
    "ml_collections",
    "numpy",
    "optax",
    "orbax-checkpoint",
    "pillow",
    "scikit-learn",  # ships the offline digits data set of configs/default.py
    "safetensors",  # diffusers checkpoints (ddpm_jax.convert)
    "scipy",
    "tensorboardX",
    "tensorflow-datasets",
  ],
  extras_require={
    # CPU hosts: oneTBB's malloc for --host_allocator=tbbmalloc (ddpm_jax/runtime/host_memory.py).
    "cpu": [TBB],
    # The FID Inception parity test runs a PyTorch reference (torch==2.13.0 resolves to the CPU
    # wheel here), the notebook's test matplotlib; .ci/run checks formatting and lint with ruff.
    # openai's guided_diffusion (UNetModel, EncoderUNetModel, SuperResModel) and diffusers'
    # UNet2DModel for the checkpoint import's parity tests (tests/test_convert.py).
    "test": [
      "pytest",
      "pytest-xdist",
      "torch==2.13.0",
      "matplotlib",
      "ruff",
      "guided-diffusion-sdk",
      "diffusers",
      TBB,
    ],
    # Reading released .pt checkpoints (ddpm_jax.convert); safetensors / numpy inputs need nothing.
    "torch": ["torch==2.13.0"],
    # Benchmarks compare against PyTorch; torch==2.13.0 resolves to the CPU wheel on the dev
    # machines.
    "bench": ["torch==2.13.0", "diffusers", TBB],
    # Workdirs on gs:// buckets (etils.epath's filesystem backend), as the TPU launcher installs.
    "gcs": ["etils[epath-gcs]"],
  },
)
