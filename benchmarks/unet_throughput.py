r"""Throughput of the DDPM CIFAR-10 U-Net (35.7 M parameters) in JAX against PyTorch, in one run.

Prints images/s of the forward pass and of a training step (forward + backward + global-norm clip +
Adam) at batch 8 for this project's Flax U-Net and for diffusers' `UNet2DModel` of the same
architecture on PyTorch, the FLOPs XLA counts for each step (executed, and the model's: those of the
same step with direct convolutions, which `--conv_impl=winograd` does not execute in full), each as
a fraction of the dense-matmul FLOP/s measured in the same run, and the JAX/PyTorch ratios.

  pip install -r requirements.txt -e ".[bench]"
  python -m benchmarks.unet_throughput [--batch=8] [--repeats=7] [--torch=false] \
      [--dtype=bfloat16] [--conv_impl=auto|xla|winograd] \
      [--host_allocator=tbbmalloc|retained|default]

The host's malloc matters on CPU (benchmarks/README.md): by default the benchmark restarts itself
with oneTBB's malloc preloaded (the `tbb` wheel of the bench extra), which both libraries then use.
"""

from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import torch_reference
from benchmarks.timing import (
  interleaved_seconds,
  machine_description,
  setup_host_memory,
  speedup_summary,
)
from configs import ddpm_cifar10
from ddpm_jax import diffusion, models, schedules
from ddpm_jax.runtime import optim

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "Images per step.")
flags.DEFINE_integer(
  "repeats", 7, "Timed repetitions, JAX and PyTorch in turns; medians are reported."
)
flags.DEFINE_integer(
  "matmul_size",
  2048,
  "Side of the square matmul (in --dtype) that measures peak FLOP/s; on a GPU take 8192 or more.",
)
flags.DEFINE_bool("torch", True, "Also measure diffusers' UNet2DModel in PyTorch.")
flags.DEFINE_enum(
  "dtype",
  "float32",
  ["float32", "bfloat16"],
  "Compute dtype of both models (float32 params; "
  "PyTorch under autocast) and of the peak-measuring matmul.",
)
flags.DEFINE_string(
  "conv_impl", "auto", "Convolution implementation of the JAX model (auto | xla | winograd)."
)


def jax_matmul_flops_per_s(n: int, dtype: str, repeats: int) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  seconds = interleaved_seconds({"matmul": lambda: matmul(a).block_until_ready()}, repeats)[
    "matmul"
  ]
  return 2 * n**3 / float(np.median(seconds))


def jax_unet_steps(batch: int, dtype: str, conv_impl: str):
  """The jitted forward pass and training step of the DDPM CIFAR-10 U-Net, and arguments for
  each."""
  config = ddpm_cifar10.get_config()
  config.model.dtype = dtype
  config.model.conv_impl = conv_impl
  model = models.get_model(config.model)
  d = diffusion.GaussianDiffusion.from_betas(schedules.get_beta_schedule("linear", 1000))
  x0 = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3), minval=-1, maxval=1)
  t = jnp.arange(batch, dtype=jnp.int32) * 100
  params = jax.jit(model.init)(jax.random.key(1), x0, t)
  # global-norm clipping and Adam, as PyTorch's step below
  optimizer = optim.make_optimizer(config.optim)
  opt_state = optimizer.init(params)

  forward = jax.jit(lambda params, x, t: model.apply(params, x, t))

  def train_step(params, opt_state, rng):
    noise_rng, dropout_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, x0.shape)

    def loss_fn(params):
      model_fn = lambda x_t, t_: model.apply(
        params, x_t, t_, train=True, rngs={"dropout": dropout_rng}
      )
      return jnp.mean(diffusion.training_losses(d, model_fn, x0, t, noise)["loss"])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(train_step, donate_argnums=(0, 1))
  # The training step donates its parameters: it gets a copy, so that the forward pass can run after
  # it.
  return (forward, (params, x0, t)), (
    train_step,
    (jax.tree.map(jnp.copy, params), opt_state, jax.random.key(2)),
  )


def xla_flops(jitted, args) -> float:
  return jitted.lower(*args).compile().cost_analysis()["flops"]


def jax_unet(batch: int, dtype: str, conv_impl: str) -> dict:
  """The forward pass and training step as calls that block until done, and their FLOPs per call."""
  (forward, forward_args), (train_step, train_args) = jax_unet_steps(batch, dtype, conv_impl)
  names, steps = ("forward", "train"), ((forward, forward_args), (train_step, train_args))
  flops = {f"{name}_flops": xla_flops(*step) for name, step in zip(names, steps)}
  # The model's FLOPs are those of direct convolutions: what a Winograd convolution saves counts as
  # speed.
  direct = (
    flops
    if conv_impl == "xla"
    else {
      f"{name}_flops": xla_flops(*step)
      for name, step in zip(names, jax_unet_steps(batch, dtype, "xla"))
    }
  )
  flops.update({f"{name}_model_flops": direct[f"{name}_flops"] for name in names})
  state = list(train_args)

  def run_train_step():
    state[0], state[1], loss = train_step(*state)
    loss.block_until_ready()

  return dict(
    forward=lambda: forward(*forward_args).block_until_ready(), train=run_train_step, **flops
  )


def torch_unet(batch: int, dtype: str, repeats: int) -> dict:
  """diffusers' UNet2DModel of the same architecture: forward and training-step calls, and matmul
  FLOP/s."""
  import torch

  device = torch_reference.torch_device()
  # float32 parameters and bfloat16 compute, as the JAX model's `dtype`.
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bfloat16")

  model = torch_reference.ddpm_cifar10_unet(device, dropout=0.1)
  num_params = sum(p.numel() for p in model.parameters())
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
  x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
  t = torch.arange(batch, device=device) * 100

  def forward():
    with torch.no_grad(), autocast():
      model.eval()
      model(x, t)
    torch_reference.synchronize(device)

  def train_step():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    noise = torch.randn_like(x)
    with autocast():
      loss = torch.mean((model(x + noise, t).sample.float() - noise) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    torch_reference.synchronize(device)

  matmul_a = torch.randn(
    FLAGS.matmul_size, FLAGS.matmul_size, device=device, dtype=getattr(torch, dtype)
  )

  def matmul():
    matmul_a @ matmul_a
    torch_reference.synchronize(device)

  matmul_s = float(np.median(interleaved_seconds({"matmul": matmul}, repeats)["matmul"]))
  return dict(
    forward=forward,
    train=train_step,
    num_params=num_params,
    matmul_flops_per_s=2 * FLAGS.matmul_size**3 / matmul_s,
  )


def main(argv):
  del argv
  setup_host_memory()
  print(f"machine: {machine_description()}", flush=True)
  batch, repeats = FLAGS.batch, FLAGS.repeats
  print(
    f"devices: {jax.devices()}  batch {batch}  repeats {repeats}  JAX dtype {FLAGS.dtype}, conv "
    f"{FLAGS.conv_impl}",
    flush=True,
  )
  peak = jax_matmul_flops_per_s(FLAGS.matmul_size, FLAGS.dtype, repeats)
  print(
    f"JAX dense matmul {FLAGS.matmul_size}², {FLAGS.dtype}: {peak / 1e9:.1f} GFLOP/s", flush=True
  )
  j = jax_unet(batch, FLAGS.dtype, FLAGS.conv_impl)
  p = torch_unet(batch, FLAGS.dtype, repeats) if FLAGS.torch else None
  if p:
    print(
      f"PyTorch dense matmul: {p['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s;  diffusers UNet2DModel "
      f"{p['num_params']:,} parameters",
      flush=True,
    )
  for name in ("forward", "train"):
    seconds = interleaved_seconds({"jax": j[name], **({"torch": p[name]} if p else {})}, repeats)
    jax_s, flops, model_flops = (
      float(np.median(seconds["jax"])),
      j[f"{name}_flops"],
      j[f"{name}_model_flops"],
    )
    print(
      f"JAX {name:8s}: {batch / jax_s:6.2f} img/s  executed {flops / batch / 1e9:5.1f} GFLOP/img "
      "(XLA count) "
      f"= {flops / jax_s / peak:5.1%} of matmul peak;  model {model_flops / batch / 1e9:5.1f} "
      "GFLOP/img "
      f"(direct convolutions) = {model_flops / jax_s / peak:5.1%} of matmul peak",
      flush=True,
    )
    if p:
      print(
        f"PyTorch {name:8s}: {batch / float(np.median(seconds['torch'])):6.2f} img/s   JAX / "
        "PyTorch = "
        f"{speedup_summary(seconds['torch'], seconds['jax'])}",
        flush=True,
      )


if __name__ == "__main__":
  app.run(main)
