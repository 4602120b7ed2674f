"""Model FLOP utilisation (MFU): the FLOPs of a compiled executable, by XLA's cost analysis, per
second against the device's dense peak.

  flops = compiled_flops(jax.jit(step).lower(*args).compile())  # per device, per call
  peak = peak_flops_per_s(jax.devices()[0])   # the device kind's bfloat16 peak, or measured
  mfu = flops * calls_per_s / peak

The peak of a known accelerator is its data sheet's dense bfloat16 figure (MFU is quoted against it
whatever the run's dtype, as MaxText and maxdiffusion do); any other device's (a CPU) is measured
once per process by a large matmul in float32, its fastest dtype there.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# dense bfloat16 TFLOP/s per chip (no sparsity), by a substring of `device.device_kind`: the first
# that matches (the PCIe H100 before the SXM one; TPU v5e's kind is "TPU v5 lite", v5p's "TPU v5")
PEAK_BF16_TFLOPS = (
  ("H100 PCIe", 756.0),
  ("H100", 989.4),
  ("H200", 989.4),
  ("GH200", 989.4),
  ("B200", 2250.0),
  ("A100", 312.0),
  ("L4", 121.0),
  ("V100", 125.0),  # (float16)
  ("TPU v3", 123.0),
  ("TPU v4", 275.0),
  ("TPU v5 lite", 197.0),
  ("TPU v5e", 197.0),
  ("TPU v5", 459.0),
  ("TPU v6 lite", 918.0),
  ("TPU v6e", 918.0),
)


def compiled_flops(compiled: jax.stages.Compiled) -> float:
  """FLOPs of one call of `compiled` on one device (XLA's count of its partitioned module)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get("flops", 0.0))


def data_sheet_peak(device_kind: str) -> float | None:
  """The dense bfloat16 FLOP/s of a known accelerator (PEAK_BF16_TFLOPS), else None."""
  for name, tflops in PEAK_BF16_TFLOPS:
    if name in device_kind:
      return tflops * 1e12
  return None


@functools.cache
def measured_peak(platform: str, size: int = 1024, repeats: int = 3) -> float:
  """FLOP/s of a `size`² matmul on the default device (float32 on CPU, else bfloat16): the best of
  `repeats` after a compiling call."""
  dtype = jnp.float32 if platform == "cpu" else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def peak_flops_per_s(device: jax.Device) -> tuple[float, str]:
  """-> (the device's peak FLOP/s, where it comes from: "data sheet" or "measured")."""
  peak = data_sheet_peak(device.device_kind)
  if peak is not None:
    return peak, "data sheet"
  return measured_peak(device.platform), "measured"
