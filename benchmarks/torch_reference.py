"""The PyTorch side of the benchmarks: diffusers' UNet2DModel built as the DDPM CIFAR-10 U-Net, on
the device that matches JAX's."""

from __future__ import annotations

import jax


def torch_device():
  """CUDA where JAX runs on a GPU and this PyTorch has it, else the CPU (said so where JAX runs on
  an accelerator: the ratio then compares devices, not libraries)."""
  import torch

  backend = jax.default_backend()
  if backend == "gpu" and torch.cuda.is_available():
    return torch.device("cuda")
  if backend != "cpu":
    print(
      f"PyTorch has no {backend} here: it runs on the CPU, so JAX / PyTorch compares devices",
      flush=True,
    )
  return torch.device("cpu")


def synchronize(device) -> None:
  """Waits for PyTorch's queued work on `device` (a no-op on the CPU), so that a timed call ends
  with it."""
  import torch

  if device.type == "cuda":
    torch.cuda.synchronize(device)


def ddpm_cifar10_unet(device, dropout: float = 0.0):
  """diffusers' UNet2DModel with the architecture of configs/ddpm_cifar10.py (35,746,307
  parameters)."""
  from diffusers import UNet2DModel
  import torch

  torch.manual_seed(0)
  return UNet2DModel(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    dropout=dropout,
  ).to(device)
