r"""What a training job gets from the accelerator JAX sees, in one process within a time budget.

  python -m benchmarks.accelerator [--budget_s=480] [--out=FILE.json] [--reduced] [--torch=true] \
      [--models=ddpm_cifar10_unet,adm_imagenet64,dit_b2_latent32] [--dtypes=bfloat16,float32]

For the DDPM CIFAR-10 U-Net (batch 128), ADM ImageNet-64 (batch 32) and DiT-B/2 on 32×32×4 latents
(batch 256), each in bfloat16 (float32 parameters and optimizer state) and float32: the project's
own train step (`train.make_train_step`: loss, backward, clipping, Adam, EMA) in images/s, its model
TFLOP/s (XLA's cost analysis of the compiled step) and MFU against the dense bfloat16 matmul peak
measured in the same run (and against the device kind's data sheet where known: "mfu_data_sheet"),
its compile time with JAX's persistent compilation cache cold (empty) and warm (after
`jax.clear_caches()`), bfloat16 also without the default's activation checkpointing (`model.remat`:
"products" on accelerators; on a CPU, where the default has none, with whole blocks checkpointed);
the same models in PyTorch on the same device where diffusers has them (UNet2DModel,
DiTTransformer2DModel; autocast for bfloat16, TF32 on, eager and, on a GPU, `torch.compile`) as the
JAX / PyTorch ratio; DDIM sampling (50 steps, batch 256) in images/s; and the input pipeline's
images/s (32² PNGs, batch 128) with 0 … N worker processes on the host's cores.

Tasks run in order of importance (JAX's train steps; PyTorch eager; sampling; the input pipeline;
`torch.compile`, minutes per model) and each starts only while the budget lasts (one compile may
overrun it); skipped ones are listed. On a CPU (or with --reduced) every model and batch is shrunk
so that the whole runs in about a minute: a test of the code, not a figure. Prints a table and
writes JSON (default: benchmarks/results/accelerator_<device>_<date>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys
import tempfile
import time
from typing import Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the device

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.input_throughput import images_per_second, write_images  # noqa: E402
from benchmarks.timing import machine_description  # noqa: E402
from configs import adm_imagenet64, ddpm_cifar10, default, dit_b2_cifar10  # noqa: E402
from ddpm_jax import families, models, train  # noqa: E402
from ddpm_jax.jobs import sample as sample_lib  # noqa: E402
from ddpm_jax.runtime import flops, parallel  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass
class Setup:
  """A benchmarked model: its config (model and data shape), its train and sampling batches, and
  diffusers' model of the same architecture (None: diffusers has none)."""

  config: ml_collections.ConfigDict
  batch: int
  sample_batch: int
  sample_steps: int
  torch_model: Callable | None


def setups(reduced: bool) -> dict[str, Setup]:
  cifar = ddpm_cifar10.get_config()
  adm = adm_imagenet64.get_config()
  dit = dit_b2_cifar10.get_config()
  dit.data.update(image_size=32, num_channels=4)  # SD-VAE latents of 256² images
  dit.model.update(out_channels=8, num_classes=1000)
  if not reduced:
    return {
      "ddpm_cifar10_unet": Setup(cifar, 128, 256, 50, torch_unet),
      "adm_imagenet64": Setup(adm, 32, 256, 50, None),
      "dit_b2_latent32": Setup(dit, 256, 256, 50, torch_dit),
    }
  for config in (cifar, adm):  # the same kinds of blocks, small
    config.data.image_size = 16
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
  adm.model.num_head_channels = 32
  dit.data.image_size = 8
  dit.model = default.dit_model("S", 2, depth=2, hidden_size=64, num_heads=2)
  dit.model.update(out_channels=8, num_classes=1000)
  return {
    "ddpm_cifar10_unet": Setup(cifar, 4, 4, 3, torch_unet),
    "adm_imagenet64": Setup(adm, 2, 4, 3, None),
    "dit_b2_latent32": Setup(dit, 4, 4, 3, torch_dit),
  }


class Budget:
  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds
    self.skipped: list[str] = []

  def left(self) -> float:
    return self.end - time.perf_counter()

  def allows(self, task: str) -> bool:
    if self.left() > 0:
      return True
    self.skipped.append(task)
    print(f"  skipped (budget spent): {task}", flush=True)
    return False


def seconds_per_call(fn: Callable[[], object], budget: Budget, max_calls: int = 10) -> float:
  """Median seconds of `fn` (which blocks until done) after one warm-up call: up to `max_calls`
  calls, fewer (at least 2) where the budget ends."""
  fn()
  times = []
  while len(times) < max_calls and (len(times) < 2 or budget.left() > 0):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak(dtype: str, size: int, budget: Budget) -> float:
  """FLOP/s of a `size`² matmul in `dtype`."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  return 2 * size**3 / seconds_per_call(lambda: matmul(a).block_until_ready(), budget, 20)


def random_batch(config, batch: int) -> dict:
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)
  labels = rng.integers(0, max(config.model.get("num_classes", 0), 1), batch).astype(np.int32)
  return {"image": images, "label": labels}


def jax_train_step(
  setup: Setup, dtype: str, peak: float, budget: Budget, remat: bool | None = None
) -> dict:
  """images/s, TFLOP/s, MFU and compile times of the project's train step (model.remat `remat`)."""
  config = setup.config.copy_and_resolve_references()
  config.model.dtype, config.training.batch_size = dtype, setup.batch
  config.model.remat = remat
  batch = random_batch(config, setup.batch)
  state = train.create_train_state(config, jax.random.key(0))
  step = train.make_train_step(config)
  start = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(1)).compile()
  cold = time.perf_counter() - start
  jax.clear_caches()  # the in-memory caches: the next compile reads the persistent cache
  start = time.perf_counter()
  step.lower(state, batch, jax.random.key(1)).compile()
  warm = time.perf_counter() - start
  state_box = [state]

  def run():
    state_box[0], metrics = compiled(state_box[0], batch, jax.random.key(1))
    jax.block_until_ready(metrics)

  seconds = seconds_per_call(run, budget)
  step_flops = flops.compiled_flops(compiled)
  row = {
    "remat": str(models.remat_setting(remat)),
    "images_per_s": setup.batch / seconds,
    "tflops_per_s": step_flops / seconds / 1e12,
    "mfu": step_flops / seconds / peak,
    "gflop_per_image": step_flops / setup.batch / 1e9,
    "compile_cold_s": cold,
    "compile_warm_s": warm,
  }
  sheet = flops.data_sheet_peak(jax.devices()[0].device_kind)
  if sheet:
    row["mfu_data_sheet"] = step_flops / seconds / sheet
  return row


def torch_unet(device, reduced: bool):
  from diffusers import UNet2DModel

  from benchmarks import torch_reference

  if not reduced:
    return torch_reference.ddpm_cifar10_unet(device, dropout=0.1)
  return UNet2DModel(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    dropout=0.1,
  ).to(device)


def torch_dit(device, reduced: bool):
  from diffusers import DiTTransformer2DModel

  heads, head_dim, layers, size = (2, 32, 2, 8) if reduced else (12, 64, 12, 32)
  return DiTTransformer2DModel(
    num_attention_heads=heads,
    attention_head_dim=head_dim,
    in_channels=4,
    out_channels=8,
    num_layers=layers,
    sample_size=size,
    num_embeds_ada_norm=1000,
  ).to(device)


def torch_train_step(setup: Setup, dtype: str, reduced: bool, compiled: bool, budget: Budget):
  """images/s of diffusers' model: ε-MSE, backward, clipping, Adam (autocast for bfloat16)."""
  import torch

  from benchmarks import torch_reference

  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  device = torch_reference.torch_device()
  model = setup.torch_model(device, reduced)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
  size, channels = setup.config.data.image_size, setup.config.data.num_channels
  x = torch.rand(setup.batch, channels, size, size, device=device) * 2 - 1
  t = torch.randint(0, 1000, (setup.batch,), device=device)
  labels = torch.randint(0, 1000, (setup.batch,), device=device)
  is_dit = setup.torch_model is torch_dit
  forward = torch.compile(model) if compiled else model

  def run():
    optimizer.zero_grad(set_to_none=True)
    noise = torch.randn_like(x)
    with torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bfloat16"):
      kwargs = {"class_labels": labels} if is_dit else {}
      out = forward(x + noise, t, **kwargs).sample[:, :channels]
      loss = torch.mean((out.float() - noise) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    torch_reference.synchronize(device)

  return setup.batch / seconds_per_call(run, budget)


def sampling_images_per_s(setup: Setup, budget: Budget) -> float:
  """DDIM (η = 0) with the project's compiled sampler, bfloat16, a fresh network."""
  config = setup.config.copy_and_resolve_references()
  config.model.dtype = "bfloat16"
  config.sampling.update(sampler="ddim", num_steps=setup.sample_steps, timestep_spacing="trailing")
  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  sample_fn = sample_lib.make_sample_fn(family, setup.sample_batch, parallel.make_mesh())
  labels = jnp.zeros((setup.sample_batch,), jnp.int32)
  cond = families.Cond(label=labels) if config.model.get("num_classes") else None
  run = lambda: jax.block_until_ready(sample_fn(params, jax.random.key(1), cond))
  return setup.sample_batch / seconds_per_call(run, budget, max_calls=3)


def input_pipeline(reduced: bool, budget: Budget) -> dict[str, float]:
  """images/s of `loader.batches` over 32² PNGs (CIFAR-10's), by worker processes."""
  cores = os.cpu_count() or 1
  workers = sorted({0, 1, 2, *(2**i for i in range(2, 8) if 2**i <= cores), cores})
  num_images, batch = (64, 16) if reduced else (2048, 128)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    write_images(tmp, num_images, 32, 32, "png")
    for num_workers in workers:
      if not budget.allows(f"input pipeline, {num_workers} workers"):
        break
      data = ml_collections.ConfigDict(
        dict(
          dataset="image_folder",
          data_dir=tmp,
          image_size=32,
          num_channels=3,
          random_flip=True,
          resize="bilinear",
          num_workers=num_workers,
        )
      )
      results[str(num_workers)] = images_per_second(data, batch, num_images // batch - 1)
  return results


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--budget_s", type=float, default=480.0)
  parser.add_argument("--out", help="the JSON's path (default: under benchmarks/results/)")
  parser.add_argument("--reduced", action="store_true", help="small models (the CPU's default)")
  parser.add_argument("--torch", default="true", choices=("true", "false"))
  parser.add_argument("--models", default="ddpm_cifar10_unet,adm_imagenet64,dit_b2_latent32")
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  budget = Budget(args.budget_s)
  device = jax.devices()[0]
  reduced = args.reduced or device.platform == "cpu"
  cache = tempfile.mkdtemp(prefix="jax_cache_")  # cold: empty; warm: filled by the cold compile
  parallel.use_compilation_cache(cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  date = datetime.date.today().isoformat()
  print(f"machine: {machine_description()}; device kind {device.device_kind!r}; {date}", flush=True)
  print(f"{'reduced models (a test of the code)' if reduced else 'full models'}", flush=True)
  size = 1024 if reduced else 8192
  peaks = {dtype: matmul_peak(dtype, size, budget) for dtype in DTYPES}
  print("matmul peak: " + ", ".join(f"{d} {p / 1e12:.2f} TFLOP/s" for d, p in peaks.items()))
  rows, samplers, torch_rows = [], {}, {}
  every, dtypes = setups(reduced), args.dtypes.split(",")
  unknown = sorted(set(args.models.split(",")) - set(every)) + sorted(set(dtypes) - set(DTYPES))
  if unknown:
    parser.error(f"unknown --models/--dtypes {unknown}: models {', '.join(every)}")
  chosen = {name: every[name] for name in args.models.split(",")}
  for name, setup in chosen.items():
    for dtype in dtypes:
      if budget.allows(f"{name} {dtype} train step"):
        row = {"model": name, "dtype": dtype, "batch": setup.batch}
        row.update(jax_train_step(setup, dtype, peaks["bfloat16"], budget))
        rows.append(row)
        print(json.dumps(row), flush=True)
  with_torch = {n: s for n, s in chosen.items() if args.torch == "true" and s.torch_model}

  def measure_torch(mode: str, dtypes: list[str]) -> None:
    for name, setup in with_torch.items():
      for dtype in dtypes:
        if budget.allows(f"{name} {dtype} PyTorch {mode}"):
          rate = torch_train_step(setup, dtype, reduced, mode == "compile", budget)
          torch_rows[f"{name} {dtype} {mode}"] = rate
          print(f"  PyTorch {name} {dtype} {mode}: {rate:.1f} images/s", flush=True)

  measure_torch("eager", dtypes)
  # the cost of activation checkpointing: bfloat16 without the default's (an accelerator's), or
  # with whole blocks checkpointed where the default has none (a CPU's)
  other_remat = models.remat_setting(None) is False
  for name, setup in chosen.items():
    if "bfloat16" in dtypes and budget.allows(f"{name} bfloat16 train step, remat {other_remat}"):
      row = {"model": name, "dtype": "bfloat16", "batch": setup.batch}
      row.update(jax_train_step(setup, "bfloat16", peaks["bfloat16"], budget, other_remat))
      rows.append(row)
      print(json.dumps(row), flush=True)
  for name, setup in chosen.items():
    if budget.allows(f"{name} sampling"):
      samplers[name] = sampling_images_per_s(setup, budget)
  pipeline = input_pipeline(reduced, budget)
  if device.platform == "gpu":  # (minutes of compilation each: last)
    measure_torch("compile", ["bfloat16"])
  for row in rows:
    for mode in ("eager", "compile"):
      rate = torch_rows.get(f"{row['model']} {row['dtype']} {mode}")
      if rate:
        row[f"torch_{mode}_images_per_s"] = rate
        row[f"jax_over_torch_{mode}"] = row["images_per_s"] / rate
  result = {
    "machine": machine_description(),
    "device_kind": device.device_kind,
    "date": date,
    "reduced": reduced,
    "matmul_peak_tflops": {d: p / 1e12 for d, p in peaks.items()},
    "rows": rows,
    "sampling_images_per_s": samplers,
    "input_pipeline_images_per_s": pipeline,
    "skipped": budget.skipped,
    "seconds": args.budget_s - budget.left(),
  }
  print_table(result)
  out = args.out or os.path.join(
    RESULTS, f"accelerator_{re.sub(r'[^A-Za-z0-9]+', '_', device.device_kind)}_{date}.json"
  )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")
  return result


def print_table(result: dict) -> None:
  print(
    "\n| model | dtype | remat | batch | images/s | TFLOP/s | MFU | compile cold / warm (s) | JAX /"
    " PyTorch (eager, compile) |\n|---|---|---|---|---|---|---|---|---|"
  )
  for row in result["rows"]:
    ratios = ", ".join(
      f"{row[f'jax_over_torch_{mode}']:.2f}×"
      for mode in ("eager", "compile")
      if f"jax_over_torch_{mode}" in row
    )
    print(
      f"| {row['model']} | {row['dtype']} | {row['remat']} | {row['batch']} | "
      f"{row['images_per_s']:.1f} | "
      f"{row['tflops_per_s']:.2f} | {row['mfu']:.1%} | {row['compile_cold_s']:.1f} / "
      f"{row['compile_warm_s']:.1f} | {ratios or '—'} |"
    )
  for name, rate in result["sampling_images_per_s"].items():
    print(f"sampling, DDIM, {name}: {rate:.1f} images/s")
  pipeline = result["input_pipeline_images_per_s"]
  print(
    "input pipeline images/s by workers: " + ", ".join(f"{w}: {r:.0f}" for w, r in pipeline.items())
  )
  if result["skipped"]:
    print(f"skipped (budget): {'; '.join(result['skipped'])}")


if __name__ == "__main__":
  main()
