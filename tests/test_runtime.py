"""The runtime layer's small pieces: the metric writer's flushing and throughput, the FLOP count
and the devices' peaks."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
import tensorboardX

from ddpm_jax.runtime import flops, metric_writer


class FakeSummaryWriter:
  def __init__(self, logdir):
    self.scalars, self.flushes, self.closed = [], 0, False

  def add_scalar(self, tag, value, step):
    self.scalars.append((tag, value, step))

  def flush(self):
    self.flushes += 1

  def close(self):
    self.closed = True


def test_the_metric_writer_flushes_at_checkpoints_not_every_log_line(monkeypatch, tmp_path):
  monkeypatch.setattr(tensorboardX, "SummaryWriter", FakeSummaryWriter)
  writer = metric_writer.MetricWriter(str(tmp_path), total_steps=100, is_writer=True)
  metrics = {"loss": 1.0, "grad_norm": 2.0, "lr": 1e-3}
  metrics |= {f"loss_q{q}_{kind}": 1.0 for q in range(4) for kind in ("sum", "count")}
  for step in range(1, 11):
    writer.add(metrics)
    writer.write(step)
  writer.write_scalars("eval", {"loss": 0.5}, 10)
  assert writer.writer.flushes == 0 and len(writer.writer.scalars) > 10
  writer.flush()  # the train loop's, after each checkpoint
  assert writer.writer.flushes == 1
  writer.close()
  assert writer.writer.closed


def test_the_metric_writer_gives_tflops_per_device_and_mfu(monkeypatch, tmp_path):
  monkeypatch.setattr(tensorboardX, "SummaryWriter", FakeSummaryWriter)
  clock = iter([100.0, 104.0])  # the writer's start, then the first log line: 8 steps in 4 s
  monkeypatch.setattr(metric_writer.time, "time", lambda: next(clock))
  writer = metric_writer.MetricWriter(str(tmp_path), total_steps=100, is_writer=True)
  writer.set_flops(3e12, 12e12, "data sheet")  # 3 TFLOP per step, a 12 TFLOP/s device
  metrics = {"loss": 1.0, "grad_norm": 2.0, "lr": 1e-3}
  metrics |= {f"loss_q{q}_{kind}": 1.0 for q in range(4) for kind in ("sum", "count")}
  for _ in range(8):
    writer.add(metrics)
  writer.write(8)
  scalars = {tag: value for tag, value, _ in writer.writer.scalars}
  assert scalars["train/steps_per_s"] == pytest.approx(2.0)
  assert scalars["train/tflops_per_device"] == pytest.approx(6.0)  # 3 TFLOP · 2 steps/s
  assert scalars["train/mfu"] == pytest.approx(0.5)


def test_compiled_flops_are_xlas_count_per_device():
  """A matmul's 2mkn FLOPs; split along its rows over 8 devices, each device's share."""
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
  assert flops.compiled_flops(jax.jit(jnp.matmul).lower(a, b).compile()) == 2 * 64 * 32 * 16
  script = (
    "import jax, jax.numpy as jnp\n"
    "from jax.sharding import NamedSharding, PartitionSpec as P\n"
    "from ddpm_jax.runtime import flops\n"
    "mesh = jax.make_mesh((8,), ('data',))\n"
    "rows = NamedSharding(mesh, P('data'))\n"
    "a = jax.device_put(jnp.ones((64, 32)), rows)\n"
    "step = jax.jit(jnp.matmul, out_shardings=rows)\n"
    "print(flops.compiled_flops(step.lower(a, jnp.ones((32, 16))).compile()))\n"
  )
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert float(out.stdout.split()[-1]) == 2 * 64 * 32 * 16 / 8


def test_peaks_by_device_kind_and_measured_elsewhere():
  assert flops.data_sheet_peak("NVIDIA H100 80GB HBM3") == 989.4e12
  assert flops.data_sheet_peak("NVIDIA H100 PCIe") == 756e12
  assert (
    flops.data_sheet_peak("TPU v5 lite") == 197e12 and flops.data_sheet_peak("TPU v5") == 459e12
  )
  assert flops.data_sheet_peak("cpu") is None
  peak, source = flops.peak_flops_per_s(jax.devices("cpu")[0])
  assert source == "measured" and 1e8 < peak < 1e14
