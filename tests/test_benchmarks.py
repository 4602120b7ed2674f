"""The benchmarks' prepared commands run on the CPU (their reduced mode): their output holds what
the README quotes, consistently."""

import json

import pytest

from helpers import run_module


@pytest.mark.extended  # (about a minute: two compiled train steps, PyTorch's, a sampler)
def test_the_accelerator_benchmark_runs_in_one_command_within_its_budget(tmp_path):
  out = tmp_path / "accelerator.json"
  run_module("benchmarks.accelerator", "--budget_s=90", f"--out={out}", "--models=dit_b2_latent32")
  result = json.loads(out.read_text())
  assert result["reduced"] and result["device_kind"] == "cpu" and not result["skipped"]
  assert result["seconds"] < 90 + 30  # (a compile may overrun the budget, not a timing loop)
  peak = result["matmul_peak_tflops"]["bfloat16"]
  # the defaults (no remat on a CPU), then bfloat16 with the other remat setting
  assert [row["dtype"] for row in result["rows"]] == ["bfloat16", "float32", "bfloat16"]
  assert [row["remat"] for row in result["rows"]] == ["False", "False", "True"]
  for row in result["rows"]:
    assert row["model"] == "dit_b2_latent32" and row["images_per_s"] > 0
    # TFLOP/s = FLOPs per image · images/s; MFU = TFLOP/s / the bfloat16 matmul's
    tflops = row["gflop_per_image"] * row["images_per_s"] / 1e3
    assert row["tflops_per_s"] == pytest.approx(tflops, rel=1e-6)
    assert row["mfu"] == pytest.approx(tflops / peak, rel=1e-6)
    assert 0 < row["compile_warm_s"] < row["compile_cold_s"]  # the persistent cache's hit
    assert row["jax_over_torch_eager"] == pytest.approx(
      row["images_per_s"] / row["torch_eager_images_per_s"]
    )
  assert result["sampling_images_per_s"]["dit_b2_latent32"] > 0
  assert set(result["input_pipeline_images_per_s"]) == {"0", "1", "2"}
  # no budget left after the peak: every task skipped and listed, the JSON still written
  run_module("benchmarks.accelerator", "--budget_s=0", f"--out={out}", "--models=dit_b2_latent32")
  result = json.loads(out.read_text())
  assert result["rows"] == [] and "dit_b2_latent32 bfloat16 train step" in result["skipped"]


@pytest.mark.slow  # (two processes that train one step of the offline default)
def test_the_startup_benchmark_reports_a_warm_start_that_loads_its_executables():
  import subprocess
  import sys

  from helpers import REPO

  out = subprocess.run(
    [sys.executable, "-m", "benchmarks.startup", "--setups=default", "--json"],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  (line,) = [json.loads(text) for text in out.splitlines() if text.startswith("{")]
  assert line["setup"] == "default" and line["warm_s"] == line["warm"]["first_train_step"]
  # the cold start compiled, the warm one loaded both executables instead of tracing them
  assert line["cold"]["executable_loads"] == 0 < line["warm"]["executable_loads"]
  assert line["cold"]["sampler_load"] == 0 < line["warm"]["sampler_load"]  # (and the sampler)
  assert line["warm"]["samples_floor"] <= line["warm"]["first_samples"]
  parts = ("imports", "executable_loads", "first_runs")
  assert line["floor_s"] == pytest.approx(sum(line["warm"][part] for part in parts))
  assert 0 < line["floor_s"] <= line["warm_s"]
