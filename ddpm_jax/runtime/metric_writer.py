"""Training logs: step metrics averaged over the log interval, one console line each, TensorBoard
scalars and images (process 0 writes; flushed at checkpoints and at the end). With the step's FLOPs
(`set_flops`), each line also gives the model TFLOP/s per device and the MFU."""

from __future__ import annotations

import os
import sys
import time

from absl import logging
import numpy as np

NUM_LOSS_QUARTILES = 4


def summary_writer(logdir: str):
  """tensorboardX's SummaryWriter, imported without torch: where torch is installed, tensorboardX
  imports it (1.5 s of every start-up) only to accept its tensors, and ours are numpy."""
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX allows
    try:
      import tensorboardX  # noqa: F401
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter

  return SummaryWriter(logdir)


class MetricWriter:
  """Averages step metrics over the log interval; prints one console line and writes TensorBoard
  scalars."""

  def __init__(self, workdir: str, total_steps: int, is_writer: bool):
    self.total_steps, self.is_writer = total_steps, is_writer
    self.writer = None
    if is_writer:
      self.writer = summary_writer(os.path.join(workdir, "tensorboard"))
    self.sums: dict[str, float] = {}
    self.count = 0
    self.skipped, self.total_skipped = 0, 0  # updates skipped for a non-finite loss or gradient
    self.last_time, self.last_step = time.time(), None
    self.flops_per_step, self.peak_flops = 0.0, None

  def set_flops(self, flops_per_step: float, peak_flops: float, peak_source: str) -> None:
    """The train step's FLOPs per device (XLA's cost analysis) and the device's peak FLOP/s."""
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    logging.info(
      "Train step: %.3g GFLOP per device; the device's peak: %.1f TFLOP/s (%s).",
      flops_per_step / 1e9,
      peak_flops / 1e12,
      peak_source,
    )

  def add(self, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def count_nonfinite_skip(self) -> None:
    self.skipped += 1
    self.total_skipped += 1

  def write(self, step: int) -> None:
    if self.skipped:
      logging.warning(
        "step %d: %d updates of this interval skipped (non-finite), %d in all.",
        step,
        self.skipped,
        self.total_skipped,
      )
    if self.skipped or self.total_skipped:
      self.write_scalars("train", {"nonfinite_skips": self.skipped}, step)
    self.skipped = 0
    if not self.count:
      return
    now = time.time()
    steps_done = self.count if self.last_step is None else step - self.last_step
    steps_per_s = steps_done / max(now - self.last_time, 1e-9)
    scalars = {k: self.sums[k] / self.count for k in ("loss", "grad_norm", "lr")}
    for q in range(NUM_LOSS_QUARTILES):
      count = self.sums[f"loss_q{q}_count"]
      if count:
        scalars[f"loss_q{q}"] = self.sums[f"loss_q{q}_sum"] / count
    scalars["steps_per_s"] = steps_per_s
    throughput = ""
    if self.flops_per_step and self.peak_flops:
      scalars["tflops_per_device"] = self.flops_per_step * steps_per_s / 1e12
      scalars["mfu"] = self.flops_per_step * steps_per_s / self.peak_flops
      throughput = f"  {scalars['tflops_per_device']:.3g} TFLOP/s/device (MFU {scalars['mfu']:.1%})"
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    if self.is_writer:
      quartiles = " ".join(
        f"q{q} {scalars[f'loss_q{q}']:.4f}"
        for q in range(NUM_LOSS_QUARTILES)
        if f"loss_q{q}" in scalars
      )
      logging.info(
        "step %d/%d  loss %.5f (%s)  grad_norm %.3f  lr %.2e  %.2f steps/s%s  ETA %s",
        step,
        self.total_steps,
        scalars["loss"],
        quartiles,
        scalars["grad_norm"],
        scalars["lr"],
        steps_per_s,
        throughput,
        time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 86400:.1f} days",
      )
    self.write_scalars("train", scalars, step)
    self.sums, self.count, self.last_time, self.last_step = {}, 0, now, step

  def write_scalars(self, prefix: str, scalars: dict[str, float], step: int) -> None:
    if self.is_writer:
      for k, v in scalars.items():
        self.writer.add_scalar(f"{prefix}/{k}", v, step)

  def flush(self) -> None:
    """Writes the events out: at checkpoints and at the end, not every log line (on gs:// each
    flush uploads the whole events file again)."""
    if self.writer is not None:
      self.writer.flush()

  def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
    if self.is_writer:
      self.writer.add_image(tag, image, step, dataformats="HWC")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
