"""The runtime layer's small pieces: the metric writer's flushing and throughput, the FLOP count
and the devices' peaks."""

import os
import shutil
import subprocess
import sys
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
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


@pytest.fixture
def executables_dir(tmp_path, monkeypatch):
  """runtime/executables.py saving under tmp_path, with this process's executables forgotten."""
  from ddpm_jax.runtime import executables

  monkeypatch.setattr(executables, "directory", lambda: epath.Path(tmp_path))
  monkeypatch.setattr(executables, "_IN_MEMORY", {})
  return tmp_path


def test_a_saved_executable_is_loaded_without_tracing_and_refused_when_damaged(
  executables_dir, caplog
):
  from ddpm_jax.runtime import executables

  traces = []

  salt = float(np.random.default_rng().random())  # a new program: JAX's own cache cannot have it

  def jitted_double():  # a new function each time: as in a new process, JAX has no trace of it
    def double(x):
      traces.append(1)  # (Python runs while tracing only)
      return x * 2 + salt

    return jax.jit(double)

  x = jnp.arange(4.0)
  first = executables.compiled(jitted_double, (x,), "double", "key")
  assert len(traces) == 1 and len(list(executables_dir.glob("double-*.bin"))) == 1
  executables._IN_MEMORY.clear()  # as a restarted process
  loaded_before = executables.load_seconds
  never = lambda: pytest.fail("a loaded executable built its jitted function")
  again = executables.compiled(never, (x,), "double", "key")
  assert len(traces) == 1 and executables.load_seconds > loaded_before
  np.testing.assert_array_equal(again(x), first(x))
  # other shapes: another executable
  executables.compiled(jitted_double, (jnp.arange(5.0),), "double", "key")
  assert len(traces) == 2 and len(list(executables_dir.glob("double-*.bin"))) == 2
  # a damaged file: removed with a warning, and the program compiled (JAX's own cache has it now:
  # not saved again, see below)
  executables._IN_MEMORY.clear()
  path = max(executables_dir.glob("double-*.bin"), key=lambda p: p.stat().st_mtime_ns)
  path.write_bytes(b"truncated")
  again = executables.compiled(jitted_double, (jnp.arange(5.0),), "double", "key")
  assert len(traces) == 3 and "cannot be loaded" in caplog.text and not path.exists()
  np.testing.assert_array_equal(again(jnp.arange(5.0)), jnp.arange(5.0) * 2 + salt)


def test_the_executables_key_covers_the_source_and_the_environment(monkeypatch):
  from ddpm_jax.runtime import executables

  args = (jnp.zeros(3),)
  key = executables.cache_key("step", "config", args)
  assert key == executables.cache_key("step", "config", args)
  monkeypatch.setattr(executables, "source_digest", lambda: "edited source")
  assert executables.cache_key("step", "config", args) != key
  monkeypatch.undo()
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=false")
  assert executables.cache_key("step", "config", args) != key
  monkeypatch.undo()
  sharded = (jax.device_put(jnp.zeros(3), jax.sharding.SingleDeviceSharding(jax.devices()[0])),)
  assert executables.cache_key("step", "config", (jnp.zeros(3, jnp.int32),)) != key
  assert executables.cache_key("step", "config", sharded) == key  # (the same placement)


def test_only_the_newest_executables_are_kept(executables_dir, monkeypatch):
  from ddpm_jax.runtime import executables

  monkeypatch.setattr(executables, "MAX_FILES", 2)
  salt = float(np.random.default_rng().random())  # (new programs)
  for n in range(3):
    executables.compiled(lambda: jax.jit(lambda x: x + salt), (jnp.zeros(n + 1),), "add", "key")
    time.sleep(1.1)  # (distinct modification times)
  assert len(list(executables_dir.glob("add-*.bin"))) == 2


def test_an_executable_from_jaxs_own_cache_is_not_saved(tmp_path):
  """XLA:CPU re-serialises an executable that JAX read from its persistent cache without its
  kernels: a process that got it from there saves none, and the next still compiles and runs."""
  script = (
    "import jax, jax.numpy as jnp\n"
    "from absl import logging\n"
    "from ddpm_jax.runtime import executables\n"
    "logging.set_verbosity(logging.INFO)\n"
    "double = lambda: jax.jit(lambda x: x * 2)\n"
    "step = executables.compiled(double, (jnp.arange(4.0),), 'double', 'k')\n"
    "print(step(jnp.arange(4.0)).tolist())\n"
  )
  env = {
    **os.environ,
    "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  run = lambda: subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True
  )
  saved = tmp_path / "cache" / "executables"
  first = run()  # compiled: saved in both caches
  assert first.returncode == 0 and len(list(saved.glob("double-*.bin"))) == 1, first.stderr[-2000:]
  for path in saved.glob("*.bin"):
    path.unlink()
  second = run()  # JAX's cache hit: not saved here
  assert "came from JAX's persistent cache: not saved" in second.stderr
  assert not list(saved.glob("*.bin"))
  third = run()
  assert third.returncode == 0 and third.stdout.split("\n")[-2] == "[0.0, 2.0, 4.0, 6.0]"


@pytest.mark.slow  # (compiles a sampler three times)
def test_a_restarted_sampling_job_loads_its_sampler(executables_dir, monkeypatch, caplog):
  """Several batches: the compiled sampler is saved, and a restarted job loads it (without
  building the sampler) and draws the same samples; one batch keeps its per-step progress (a host
  callback: not saved)."""
  from absl import logging

  from ddpm_jax import families
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.runtime import executables, parallel
  from tests.helpers import tiny_config

  logging.set_verbosity(logging.INFO)
  config = tiny_config()
  # a new program (the schedule's constants): JAX's own cache cannot have it
  config.diffusion.num_timesteps = int(np.random.default_rng().integers(100, 10_000))
  config.sampling.sampler, config.sampling.num_steps, config.sampling.batch_size = "ddim", 3, 2
  params = jax.jit(families.get_family(config).init_params)(jax.random.PRNGKey(0))
  mesh = parallel.make_mesh()
  first, _ = sample_lib.generate(config, params, 4, mesh)
  assert len(list(executables_dir.glob("sampler-*.bin"))) == 1
  executables._IN_MEMORY.clear()  # as a restarted process
  never = lambda *args, **kwargs: pytest.fail("a loaded sampler was built again")
  with monkeypatch.context() as patch:
    patch.setattr(sample_lib, "make_sample_fn", never)
    again, _ = sample_lib.generate(config, params, 4, mesh)
  np.testing.assert_array_equal(again, first)
  # one batch: the steps' progress, and nothing saved
  one, _ = sample_lib.generate(config, params, 2, mesh)
  np.testing.assert_array_equal(one, first[:2])
  assert "step 3 / 3" in caplog.text and len(list(executables_dir.glob("sampler-*.bin"))) == 1


def test_the_saved_samplers_key_covers_the_files_it_reads(monkeypatch, tmp_path):
  """An ARDM decodes along the loss components --mode=eval wrote: new ones, a new program."""
  from ddpm_jax import families
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.runtime import executables
  from tests.helpers import tiny_config

  monkeypatch.setattr(executables, "compiled", lambda make, args, name, key: key)
  config = tiny_config(family="ardm")
  family = families.get_family(config)
  key = lambda: sample_lib.saved_sample_fn(config, family, 2, None, (), None, str(tmp_path))
  without = key()
  family.save_likelihood_terms(str(tmp_path), {"loss_components": np.ones((2, 64))})
  written = key()
  family.save_likelihood_terms(str(tmp_path), {"loss_components": np.zeros((2, 64))})
  assert len({without, written, key()}) == 3


@pytest.mark.slow  # (compiles and runs samplers, trains twice)
def test_a_restarted_training_job_loads_its_grid_sampler(executables_dir, monkeypatch, tmp_path):
  from ddpm_jax import train
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.runtime import executables
  from tests.helpers import tiny_config

  config = tiny_config(num_train_steps=4)
  # a new program (the schedule's constants): JAX's own cache cannot have it
  config.diffusion.num_timesteps = int(np.random.default_rng().integers(100, 10_000))
  config.sampling.num_samples, config.training.sample_every_steps = 4, 4
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  saved = [path.name for path in executables_dir.glob("*.bin")]
  assert len([name for name in saved if name.startswith("sampler-")]) == 1, saved
  executables._IN_MEMORY.clear()  # as a restarted process (of the same config, from scratch)
  shutil.rmtree(workdir)
  never = lambda *args, **kwargs: pytest.fail("a loaded sampler was built again")
  monkeypatch.setattr(sample_lib, "make_sample_fn", never)
  train.train_and_evaluate(config, str(workdir))
  assert (workdir / "samples" / "ema_step_00000004.png").exists()
