"""The training system: the step learns; sharded, FSDP and multi-process runs agree with one device;
kill -9 and resume is bitwise identical; damaged checkpoints fall back; NaNs stop the run; bad
configs fail; host memory kept by the allocator is not faulted in again every step."""

import glob
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from ddpm_jax import ardm
from ddpm_jax.data import loader
from ddpm_jax.families import ardm as ardm_family
from ddpm_jax.families import config_validation
from ddpm_jax.jobs import train
from ddpm_jax.runtime import checkpoint, host_memory, optim, parallel
from helpers import REPO, flat_params, run_steps, tiny_config

HELPERS = os.path.join(REPO, "tests", "helpers.py")


def _env(num_devices=1):
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]), JAX_PLATFORMS="cpu"
  )
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  return env


def _assert_params_close(a, b, **tol):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], err_msg=k, **tol)


def _assert_same_training(a, b, init):
  """The same training up to float reduction order: ‖a - b‖ ≤ 1 % of ‖b - init‖, the distance
  trained.

  Elementwise comparisons are ill-conditioned here: Adam divides by √v, so where a gradient is ~0
  any rounding difference becomes an update of the same size as a real one. A wrong batch, noise or
  key moves every parameter by O(lr) and fails this by far."""
  flat = lambda d: np.concatenate([d[k].ravel() for k in sorted(d)])
  a, b, init = flat(a), flat(b), flat(init)
  assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b - init), (
    np.linalg.norm(a - b),
    np.linalg.norm(b - init),
  )


def test_loss_decreases():
  config = tiny_config()
  config.optim.lr = 3e-3
  _, losses = run_steps(config, 40)
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def test_the_documented_train_api_works_verbatim_and_the_step_compiles_once():
  # README / DESIGN: state = create_train_state(config, rng); step_fn = make_train_step(config);
  # step_fn(state, batch, rng) with the input pipeline's host batches.
  config = tiny_config()
  state = train.create_train_state(config, jax.random.key(0))
  step_fn = train.make_train_step(config)
  batches = loader.batches(
    config.data, split="train", global_batch_size=config.training.batch_size, seed=0, num_steps=3
  )
  for batch in batches:
    state, metrics = step_fn(state, batch, jax.random.key(1))
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  assert step_fn._cache_size() == 1  # one executable for the run


def test_a_bfloat16_train_step_is_finite_and_close_to_float32():
  config = tiny_config()
  _, float32_losses = run_steps(config, 3)
  config.model.dtype = "bfloat16"
  _, bfloat16_losses = run_steps(config, 3)
  assert np.all(np.isfinite(bfloat16_losses))
  # bfloat16 keeps 8 bits of mantissa: ~0.4 % per rounding, a few % over the network and 3 steps.
  np.testing.assert_allclose(bfloat16_losses, float32_losses, rtol=0.05)


@pytest.mark.parametrize("max_norm", [0.5, 10.0])  # ‖g‖ = √22 ≈ 4.7: clipped, and left alone
def test_clip_by_global_norm_equals_optax(max_norm):
  grads = {"a": jnp.full((3, 4), 0.5), "b": {"c": jnp.arange(-3.0, 3.0)}}
  norm = float(optax.tree.norm(grads))
  ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
  reference, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, reference)
  assert np.isclose(float(optax.tree.norm(ours)), min(norm, max_norm), rtol=1e-6)


def test_gradient_accumulation_makes_the_same_update():
  config = tiny_config()
  init, _ = run_steps(config, 0)
  one, _ = run_steps(config, 1)
  config.optim.grad_accum_steps = 4
  accumulated, _ = run_steps(config, 1)
  _assert_same_training(
    flat_params(accumulated.params), flat_params(one.params), flat_params(init.params)
  )


@pytest.fixture(scope="module")
def single_device_params():
  """(params after 3 steps, initial params) on one device."""
  state, _ = run_steps(tiny_config(), 3)
  init, _ = run_steps(tiny_config(), 0)
  return flat_params(state.params), flat_params(init.params)


@pytest.mark.parametrize("fsdp", [False, True])
def test_sharded_step_on_8_devices_matches_one_device(tmp_path, single_device_params, fsdp):
  out = tmp_path / "params.npz"
  subprocess.run(
    [sys.executable, HELPERS, "steps", str(out)] + (["--fsdp"] if fsdp else []),
    env=_env(8),
    check=True,
    capture_output=True,
  )
  _assert_same_training(dict(np.load(out)), *single_device_params)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes(workdir, steps: int) -> list[subprocess.Popen]:
  """A 2-process training run of tests/helpers.py in `workdir` (jax.distributed, local)."""
  address = f"localhost:{_free_port()}"
  return [
    subprocess.Popen(
      [sys.executable, HELPERS, "train", str(workdir), str(steps), address, "2", str(i)],
      env=_env(1),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    for i in range(2)
  ]


def _finish(procs) -> list[str]:
  outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
  return outputs


def _assert_same_final_params(workdir, reference_workdir) -> None:
  """Process 0's final parameters of the two runs, bitwise."""
  _assert_params_close(
    dict(np.load(workdir / "params_0.npz")),
    dict(np.load(reference_workdir / "params_0.npz")),
    rtol=0,
    atol=0,
  )


def _checkpoint_steps(workdir) -> list[int]:
  """The complete checkpoints' steps (not orbax's temporary directories)."""
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _wait_for(path, timeout: float = 240) -> None:
  deadline = time.time() + timeout
  while not os.path.isdir(path) and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.isdir(path), f"no {path} before the deadline"


def test_two_processes_train_identically_to_one(tmp_path):
  steps = 4
  _finish(_two_processes(tmp_path / "multi", steps))
  p0, p1 = (
    dict(np.load(tmp_path / "multi" / "params_0.npz")),
    dict(np.load(tmp_path / "multi" / "params_1.npz")),
  )
  _assert_params_close(p0, p1, rtol=0, atol=0)
  config = tiny_config(num_train_steps=steps)
  single = train.train_and_evaluate(config, str(tmp_path / "single"))
  init = train.create_train_state(config, train.run_rngs(config.seed)["init"])
  _assert_same_training(p0, flat_params(single.params), flat_params(init.params))


def test_one_of_two_processes_killed_then_both_restarted_ends_bitwise_as_without(tmp_path):
  steps, rng = 16, np.random.default_rng()
  straight = _two_processes(tmp_path / "straight", steps)
  _finish(straight)
  workdir = tmp_path / "killed"
  procs = _two_processes(workdir, steps)
  _wait_for(workdir / "checkpoints" / "4")
  time.sleep(rng.uniform(0, 0.2))  # a random step after the first checkpoint
  victim = int(rng.integers(2))
  procs[victim].send_signal(signal.SIGKILL)
  try:  # its peer fails or waits in a collective that never completes
    procs[1 - victim].wait(timeout=20)
  except subprocess.TimeoutExpired:
    procs[1 - victim].kill()
  for p in procs:
    p.communicate()
  assert not os.path.exists(workdir / "params_0.npz"), "the run finished before the kill"
  _finish(_two_processes(workdir, steps))
  _assert_same_final_params(workdir, tmp_path / "straight")


def test_sigterm_to_either_of_two_processes_saves_one_step_and_stops_both(tmp_path):
  procs = _two_processes(tmp_path, 100000)
  _wait_for(tmp_path / "checkpoints" / "4")
  procs[int(np.random.default_rng().integers(2))].send_signal(signal.SIGTERM)
  outputs = _finish(procs)
  stopped = [re.findall(r"Stopped for preemption at step (\d+)", out) for out in outputs]
  steps = _checkpoint_steps(tmp_path)
  # both stop at the step they agreed on, saved together as the newest checkpoint
  assert stopped[0] and stopped[0] == stopped[1] and int(stopped[0][0]) == steps[-1], (
    stopped,
    steps,
  )
  assert sum("SIGTERM received" in out for out in outputs) == 1


def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
  steps = 16  # killed once step 8's checkpoint exists: 8 steps and 2 saves later it would be done
  subprocess.run(
    [sys.executable, HELPERS, "train", str(tmp_path / "straight"), str(steps)],
    env=_env(),
    check=True,
    capture_output=True,
  )
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(
    [sys.executable, HELPERS, "train", str(workdir), str(steps)],
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  _wait_for(workdir / "checkpoints" / "8")  # killed only once that checkpoint exists
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(workdir / "params_0.npz"), "the run finished before it was killed"
  subprocess.run(
    [sys.executable, HELPERS, "train", str(workdir), str(steps)],
    env=_env(),
    check=True,
    capture_output=True,
  )
  _assert_same_final_params(workdir, tmp_path / "straight")


def test_sigterm_saves_and_stops(tmp_path):
  proc = subprocess.Popen(
    [sys.executable, HELPERS, "train", str(tmp_path), "100000"],
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  _wait_for(tmp_path / "checkpoints" / "4")
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err.decode()[-3000:]
  steps = _checkpoint_steps(tmp_path)
  # a save at the preemption step, not only the periodic ones
  assert steps[-1] % 4 != 0 or steps[-1] > 4, steps
  assert b"preemption" in err


_COMPILE_ONE_PROGRAM = """
import sys, jax, jax.numpy as jnp
from ddpm_jax.runtime import parallel
print(parallel.use_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else None))
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
"""


def test_main_runs_use_a_persistent_compilation_cache_that_a_flag_moves_or_disables(tmp_path):
  env = dict(_env(), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", HOME=str(tmp_path / "home"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  run = lambda *args: subprocess.run(
    [sys.executable, "-c", _COMPILE_ONE_PROGRAM, *args],
    env=env,
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  default = tmp_path / "home" / ".cache" / "ddpm_jax" / "jax_cache"
  assert run() == str(default) and any(default.iterdir())  # on by default
  assert run(str(tmp_path / "moved")) == str(tmp_path / "moved") and any(
    (tmp_path / "moved").iterdir()
  )
  assert run("") == "None"


# Page faults of each of six calls (the first compiles) of a jitted sort, whose temporaries (~85 MB)
# XLA allocates anew every call, under the host allocator named by argv[1].
_PAGE_FAULTS_PER_CALL = """
import resource, sys
from ddpm_jax.runtime import host_memory
host_memory.use_host_allocator(sys.argv[1])
assert host_memory.tbbmalloc_loaded() == (sys.argv[1] == "tbbmalloc")
import jax, jax.numpy as jnp
sort = jax.jit(lambda x: jnp.sort(x)[::3].sum())
x = jnp.ones(2**22)
faults = []
for _ in range(6):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  sort(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def test_host_allocators_that_keep_freed_memory_stop_page_faults_on_every_call():
  faults = {
    allocator: [
      int(n)
      for n in subprocess.run(
        [sys.executable, "-c", _PAGE_FAULTS_PER_CALL, allocator],
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
      ).stdout.split()
    ]
    for allocator in ("default", "retained", "tbbmalloc")
  }
  # glibc's default returns the temporaries to the kernel, so each call faults them in again (4 KiB
  # pages); kept, they are faulted in while the heap grows to its peak and reused after that.
  assert min(faults["default"][1:]) > 10_000, faults
  for allocator in ("retained", "tbbmalloc"):
    assert sum(faults[allocator][1:]) < sum(faults["default"][1:]) / 4, faults


def test_tbbmalloc_restart_neither_loops_nor_goes_on_without_the_wheel(monkeypatch):
  def execve(*args):
    raise AssertionError("restarted")

  monkeypatch.setattr(os, "execve", execve)
  # named, yet not loaded in this process
  monkeypatch.setenv("LD_PRELOAD", "/lib/libtbbmalloc_proxy.so.2")
  with pytest.raises(RuntimeError, match="did not load"):
    host_memory.use_host_allocator("tbbmalloc")
  monkeypatch.delenv("LD_PRELOAD")

  def no_tbb(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "files", no_tbb)
  with pytest.raises(RuntimeError, match="needs the `tbb` wheel"):
    host_memory.use_host_allocator("tbbmalloc")
  with pytest.raises(ValueError, match="Unknown host allocator"):
    host_memory.use_host_allocator("jemalloc")


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  config = tiny_config(num_train_steps=8)
  config.sampling.num_samples = 4
  train.train_and_evaluate(config, str(tmp_path))
  assert os.path.isfile(tmp_path / "samples" / "ema_step_00000008.png")
  state_dir = tmp_path / "checkpoints" / "8" / "state"
  for path in glob.glob(str(state_dir / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  abstract_state = train.abstract_train_state(config, parallel.make_mesh())
  state, step = ckpt.restore_latest(abstract_state)
  assert step == 4 and int(state.step) == 4
  state, step = ckpt.restore_latest(abstract_state, only_step=4)  # an older step on request
  assert step == 4 and int(state.step) == 4
  with pytest.raises(FileNotFoundError, match=r"No checkpoint of step 6 .*\[8, 4\]"):
    ckpt.restore_latest(abstract_state, only_step=6)
  ckpt.close()
  assert "step 8" in caplog.text and "cannot be read" in caplog.text
  # A config whose train state does not fit the checkpoints is refused, not started afresh over
  # them.
  config.model.ch = 64
  with pytest.raises(RuntimeError, match="another config: model.ch 32 in the checkpoint, 64 here"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]


def test_a_failing_checkpoint_write_stops_the_run_and_keeps_the_previous_one(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  json_save, saves = ocp.JsonCheckpointHandler.async_save, []

  def failing_second_save(self, *args, **kwargs):  # the state is written, then the config fails
    saves.append(1)
    if len(saves) == 2:
      raise OSError(28, "No space left on device (injected)")
    return json_save(self, *args, **kwargs)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", failing_second_save)
  with pytest.raises(
    checkpoint.CheckpointSaveError, match="step 8 .* newest complete checkpoint is step 4"
  ):
    train.train_and_evaluate(tiny_config(num_train_steps=12), str(tmp_path))
  steps = lambda: _checkpoint_steps(tmp_path)
  assert steps() == [4]  # step 8 only as orbax's unfinished temporary directory
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", json_save)
  state = train.train_and_evaluate(tiny_config(num_train_steps=12), str(tmp_path))  # resumes at 4
  assert int(state.step) == 12 and steps() == [4, 8, 12]


def test_nan_in_the_loss_stops_the_run_and_saves_nothing_after_it(tmp_path, monkeypatch):
  poison_batches(monkeypatch, set(range(6, 100)))  # global batch 6 onwards
  with pytest.raises(FloatingPointError, match="at step 7"):
    train.train_and_evaluate(tiny_config(num_train_steps=12), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


def poison_batches(monkeypatch, poisoned_indices):
  """NaN in one pixel of the global batches whose index (in this run's order) is in the set."""
  import itertools

  import jax.numpy as jnp

  scale_images, batch_index = train.scale_images, itertools.count()

  def poisoned(batch):
    batch = scale_images(batch)
    if next(batch_index) in poisoned_indices:
      batch["image"] = batch["image"].at[0, 0, 0, 0].set(jnp.nan)
    return batch

  monkeypatch.setattr(train, "scale_images", poisoned)


def test_nonfinite_skip_keeps_the_state_of_the_skipped_steps_and_stops_after_too_many(
  tmp_path, monkeypatch, caplog
):
  import logging

  caplog.set_level(logging.INFO)
  config = tiny_config(num_train_steps=4)
  config.training.nonfinite, config.training.max_nonfinite_skips = "skip", 2
  clean = train.train_and_evaluate(config, str(tmp_path / "clean"))  # the same compiled step
  config.training.num_train_steps = 6
  poison_batches(monkeypatch, {4, 5})  # steps 5 and 6
  skipped = train.train_and_evaluate(config, str(tmp_path / "skip"))
  assert int(skipped.step) == 6
  # the two skipped updates left parameters, EMA and optimizer state as after step 4, bitwise
  for want, got in zip(
    jax.tree_util.tree_leaves((clean.params, clean.ema_params, clean.opt_state)),
    jax.tree_util.tree_leaves((skipped.params, skipped.ema_params, skipped.opt_state)),
  ):
    np.testing.assert_array_equal(got, want)
  assert "its update skipped (2 in a row)" in caplog.text
  assert "TFLOP/s/device (MFU" in caplog.text and "GFLOP per device" in caplog.text
  assert "2 updates of this interval skipped (non-finite), 2 in all" in caplog.text
  # resumed with every batch poisoned: stops at the third skip in a row
  config.training.num_train_steps = 12
  poison_batches(monkeypatch, set(range(100)))
  with pytest.raises(FloatingPointError, match="at 3 steps in a row, up to step 9"):
    train.train_and_evaluate(config, str(tmp_path / "skip"))


@pytest.mark.parametrize(
  "change,message",
  [
    (lambda c: setattr(c.training, "batch_size", 12), "not divisible by the 8 devices"),
    (
      lambda c: setattr(c.optim, "grad_accum_steps", 3),
      "does not split into optim.grad_accum_steps=3",
    ),
    (lambda c: setattr(c.data, "dataset", "cifar100000"), "Unknown data.dataset"),
    (
      lambda c: setattr(c.model, "attn_resolutions", (3,)),
      r"attn_resolutions \[3\] are not resolutions",
    ),
    (lambda c: setattr(c.diffusion, "loss_type", "l1"), "Unknown diffusion.loss_type 'l1'"),
    (lambda c: setattr(c.model, "out_channels", 3), "model.out_channels=3"),
    (lambda c: setattr(c.diffusion, "loss_type", "hybrid"), "needs a learned var_type"),
    (lambda c: setattr(c.model, "ch", 48), "divisible by 32"),
    (lambda c: setattr(c.optim, "ema_decay", 1.0), "ema_decay"),
    (lambda c: setattr(c.model, "dtype", "float16"), "float16' would need loss scaling"),
  ],
)
def test_bad_configs_fail_with_their_message(change, message, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  config = tiny_config()
  change(config)
  with pytest.raises(ValueError, match=message):
    config_validation.validate_config(config)


@pytest.mark.parametrize(
  "old_selector,family",
  [
    # the family blocks as every config carried them
    (lambda c: setattr(c, "sde", ml_collections.ConfigDict({"name": "ve"})), "score_sde"),
    (lambda c: setattr(c, "vdm", ml_collections.ConfigDict({"schedule": "learned"})), "vdm"),
    (lambda c: setattr(c, "ardm", ml_collections.ConfigDict({"enabled": True})), "ardm"),
    (lambda c: setattr(c.model, "name", "classifier"), "classifier"),
    (lambda c: delattr(c, "family"), "gaussian"),
  ],
)
def test_configs_with_the_old_family_selectors_get_one_line_naming_config_family(
  old_selector, family
):
  config = tiny_config()
  old_selector(config)
  with pytest.raises(ValueError) as error:
    config_validation.validate_config(config)
  message = str(error.value)
  assert "\n" not in message and "config.family" in message and family in message, message


def test_every_shipped_config_is_valid():
  import importlib

  for path in glob.glob(os.path.join(REPO, "configs", "*.py")):
    name = os.path.basename(path)[:-3]
    if name not in ("__init__", "workdir"):  # workdir.py reads a workdir's config.json
      config = importlib.import_module(f"configs.{name}").get_config()
      config_validation.validate_config(config)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver"])
def test_sample_mode_writes_npz_and_png_from_the_newest_checkpoint(tmp_path, sampler):
  from ddpm_jax.jobs import sample

  config = tiny_config(num_train_steps=4)
  train.train_and_evaluate(config, str(tmp_path))
  config.sampling.sampler, config.sampling.num_steps = sampler, 5
  config.sampling.num_samples, config.sampling.batch_size = 6, 4
  path = sample.sample(config, str(tmp_path))
  assert path.endswith("samples_4.npz")
  data = np.load(path)
  assert (
    data["images"].shape == (6, 8, 8, 1)
    and data["images"].dtype == np.uint8
    and data["labels"].shape == (6,)
  )
  assert os.path.isfile(tmp_path / "samples" / "samples_4.png")
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    sample.sample(config, str(tmp_path / "empty"))


def test_class_conditional_and_loss_aware_training_paths():
  config = tiny_config()
  config.model.num_classes = 10
  config.diffusion.var_type, config.diffusion.loss_type = "learned_range", "kl"
  config.model.out_channels = 2
  config.diffusion.timestep_sampler = "loss_aware"
  state, losses = run_steps(config, 2)
  assert np.all(np.isfinite(losses))
  # Every example of both batches entered the loss history of its t.
  assert int(np.sum(np.asarray(state.family_state.counts))) == 2 * config.training.batch_size
  assert flat_params(state.params)[
    "['params']['embedding']['class_embedding']['embedding']"
  ].shape == (11, 128)


def test_noisy_classifier_trains_and_guides_sampling(tmp_path):
  from ddpm_jax.jobs import sample

  classifier_config = tiny_config(num_train_steps=4)
  classifier_config.family, classifier_config.model.name = "classifier", "classifier"
  classifier_config.model.num_classes = 10
  del classifier_config.model.out_channels, classifier_config.model.progressive
  del classifier_config.model.null_class, classifier_config.model.embedding_dim
  del classifier_config.model.embedding_tokens
  classifier_config.model.num_head_channels = 32
  state = train.train_and_evaluate(classifier_config, str(tmp_path / "classifier"))
  assert int(state.step) == 4
  config = tiny_config(num_train_steps=4)
  train.train_and_evaluate(config, str(tmp_path / "diffusion"))
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 4, 4, 5
  config.sampling.classifier_workdir, config.sampling.classifier_scale = (
    str(tmp_path / "classifier"),
    1.0,
  )
  data = np.load(sample.sample(config, str(tmp_path / "diffusion")))
  assert data["images"].shape == (4, 8, 8, 1) and set(data["labels"]) <= set(range(10))
  config.sampling.classifier_workdir = str(tmp_path / "diffusion")
  with pytest.raises(ValueError, match="not a noisy classifier"):
    sample.sample(config, str(tmp_path / "diffusion"))


def test_eval_mode_writes_fid_is_and_bits_per_dim(tmp_path, monkeypatch):
  from test_fid import random_reference_net

  from ddpm_jax.jobs import evaluate

  # a state dict in pytorch-fid's layout (random weights, offline)
  weights = tmp_path / "inception.npz"
  np.savez(weights, **{k: v.numpy() for k, v in random_reference_net().state_dict().items()})
  config = tiny_config(num_train_steps=4)
  train.train_and_evaluate(config, str(tmp_path))
  config.sampling.num_steps, config.sampling.batch_size = 5, 8
  config.eval.inception_path, config.eval.num_fid_samples, config.eval.num_reference_images = (
    str(weights),
    8,
    16,
  )
  results = evaluate.evaluate(config, str(tmp_path))
  # The digits have a shipped feature network: the offline metrics come with FID (unconditional: no
  # accuracy).
  assert set(results) == {
    "fid",
    "sfid",
    "precision",
    "recall",
    "inception_score",
    "inception_score_std",
    "bpd",
    "feature_fd",
    "feature_class_score",
    "memorized_fraction",
  }
  assert results["feature_fd"] > 1.0 and 0 <= results["memorized_fraction"] <= 1
  # Samples of a 4-step model are far from the digits: the distance must be clearly positive.
  assert np.isfinite(results["fid"]) and results["fid"] > 1.0 and results["inception_score"] >= 1.0
  assert results["sfid"] > 1.0 and 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1
  assert 0 < results["bpd"] < 20
  assert os.path.isfile(tmp_path / "fid_stats_digits_train_8.npz") and os.path.isfile(
    tmp_path / "eval_4.json"
  )
  # The cached reference statistics are reused, not recomputed.
  monkeypatch.setattr(
    evaluate.loader, "batches", lambda *a, **k: (_ for _ in ()).throw(AssertionError)
  )
  config.eval.bpd_num_batches = 0
  assert evaluate.evaluate(config, str(tmp_path))["fid"] == pytest.approx(results["fid"])


def test_score_sde_trains_samples_and_evaluates_with_the_same_loop(tmp_path):
  # VE conditioned on log σ with Fourier features, NCSN++'s network: the set-up furthest from the
  # discrete diffusion.
  from ddpm_jax.jobs import evaluate, sample

  config = tiny_config(num_train_steps=4)
  default.with_family(config, "score_sde")
  config.sde.type, config.sde.num_scales = "ve", 25
  config.sampling.sampler = "pc"
  config.sde.conditioning, config.model.embedding_type = "sigma", "fourier"
  config.model.update(
    resblock_updown=True,
    skip_rescale=True,
    ncsnpp_layout=True,
    fir_kernel=(1, 3, 3, 1),
    progressive_input="input_skip",
    progressive="output_skip",
  )
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  config.sampling.num_samples, config.sampling.batch_size = 4, 4
  data = np.load(sample.sample(config, str(tmp_path)))
  assert data["images"].shape == (4, 8, 8, 1)
  pc_sampling = config.sampling.copy_and_resolve_references()
  config.sampling.sampler, config.sampling.num_steps = "heun", 3  # on the SDE's σ(t) grid
  heun = np.load(sample.sample(config, str(tmp_path)))["images"]
  assert heun.shape == (4, 8, 8, 1) and np.any(heun != data["images"])
  config.sampling = pc_sampling
  # --mode=eval as for DDPM: sample metrics of PC samples (the offline feature network's; FID takes
  # the same samples through the same path, tested above) and bits/dim by the probability-flow ODE.
  config.eval.num_fid_samples, config.training.batch_size = 4, 4
  results = evaluate.evaluate(config, str(tmp_path))
  assert np.isfinite(results["feature_fd"]) and results["feature_fd"] > 1.0
  assert np.isfinite(results["bpd"]) and results["bpd"] > 0
  config.model.embedding_type = "positional"
  with pytest.raises(ValueError, match="fourier"):
    config_validation.validate_config(config)
  config.sde.type, config.sde.num_scales, config.sde.conditioning = "vp", 20, "t"
  with pytest.raises(ValueError, match="num_scales"):
    config_validation.validate_config(config)


def test_vdm_trains_samples_and_evaluates_with_the_same_loop(tmp_path):
  from ddpm_jax.jobs import evaluate, sample

  config = tiny_config(num_train_steps=4)
  default.with_family(config, "vdm")
  config.vdm.n_features, config.model.fourier_features = 16, (6, 7)
  config.optim.weight_decay = 0.01  # AdamW, as the paper
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4 and set(state.params) == {"unet", "schedule"}
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 4, 4, 10
  images = np.load(sample.sample(config, str(tmp_path)))["images"]
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
  config.training.batch_size, config.eval.num_fid_samples = 8, 4
  # the VLB, on the same 8-bit footing as calc_bpd_loop
  results = evaluate.evaluate(config, str(tmp_path))
  # and the offline metrics of its samples
  assert 0 < results["bpd"] < 20 and results["feature_fd"] > 0
  config.vdm.gamma_min = 6.0
  with pytest.raises(ValueError, match="vdm.gamma_min=6.0 must be below"):
    config_validation.validate_config(config)


def test_ardm_trains_evaluates_and_decodes_in_parallel_with_the_same_loop(tmp_path):
  from ddpm_jax.jobs import evaluate, sample

  config = tiny_config(num_train_steps=4)
  default.with_family(config, "ardm")
  config.model.out_channels = 256
  train.train_and_evaluate(config, str(tmp_path))
  config.training.batch_size, config.eval.num_fid_samples = 8, 0
  bpd = evaluate.evaluate(config, str(tmp_path))["bpd"]  # exact -log p(x | σ), D = 64 network calls
  assert 0 < bpd <= 8.5  # near 8 bits (uniform over 256 values) after 4 steps
  components = np.load(ardm_family.loss_components_path(str(tmp_path)))["loss_components"]
  assert components.shape == (64,)
  np.testing.assert_allclose(components.sum() / (64 * np.log(2)), bpd, rtol=1e-4)
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 4, 4, 5
  (plan,) = ardm_family.decoding_plans(config, str(tmp_path))
  np.testing.assert_array_equal(plan, ardm.parallel_decoding_plan(components, 5))
  images = np.load(sample.sample(config, str(tmp_path)))["images"]
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
  config.model.out_channels = 2
  with pytest.raises(ValueError, match="ardm.num_classes=256 need 256"):
    config_validation.validate_config(config)


def test_upscale_ardm_trains_evaluates_and_decodes_stage_by_stage(tmp_path):
  from ddpm_jax.jobs import evaluate, sample

  config = tiny_config(num_train_steps=4)
  default.with_family(config, "ardm")
  config.ardm.upscale_bits, config.model.out_channels = 2, 4
  train.train_and_evaluate(config, str(tmp_path))
  config.training.batch_size, config.eval.num_fid_samples = 8, 0
  bpd = evaluate.evaluate(config, str(tmp_path))["bpd"]  # 4 stages · 64 network calls
  assert 0 < bpd <= 8.5
  components = np.load(ardm_family.loss_components_path(str(tmp_path)))["loss_components"]
  assert components.shape == (4, 64)  # one row of per-step losses per stage
  np.testing.assert_allclose(components.sum() / (64 * np.log(2)), bpd, rtol=1e-4)
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 4, 4, 3
  plans = ardm_family.decoding_plans(config, str(tmp_path), 4)
  for plan, stage_components in zip(plans, components):
    np.testing.assert_array_equal(plan, ardm.parallel_decoding_plan(stage_components, 3))
  images = np.load(sample.sample(config, str(tmp_path)))["images"]
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
  config.ardm.upscale_bits = 3
  with pytest.raises(ValueError, match="upscale_bits=3 must divide"):
    config_validation.validate_config(config)
  config.ardm.upscale_bits = 2
  config.model.out_channels = 256
  with pytest.raises(ValueError, match="ardm.upscale_bits=2 need 4"):
    config_validation.validate_config(config)


@pytest.mark.extended  # (two 120-step runs of the offline default)
def test_bfloat16_trains_the_offline_default_as_float32_does_with_float32_state():
  """model.dtype="auto" is bfloat16 on accelerators: there its parameters, EMA and optimizer state
  stay float32, and 120 steps of the offline default reach the float32 run's loss."""
  from configs import default
  from ddpm_jax import models

  assert models.compute_dtype("auto") == jnp.float32  # (this CPU)
  states, losses = {}, {}
  for dtype in ("bfloat16", "float32"):
    config = default.get_config()
    config.model.dtype = dtype
    config.data.num_workers = 0
    states[dtype], losses[dtype] = run_steps(config, 120)
  bf16 = states["bfloat16"]
  leaves = jax.tree_util.tree_leaves((bf16.params, bf16.ema_params, bf16.opt_state))
  assert all(leaf.dtype != jnp.bfloat16 for leaf in leaves)
  bf16_losses, f32_losses = np.array(losses["bfloat16"]), np.array(losses["float32"])
  assert abs(bf16_losses[0] - f32_losses[0]) <= 0.02 * f32_losses[0]  # one batch, one noise
  assert f32_losses[-40:].mean() < 0.5 * f32_losses[:10].mean()  # (it trained)
  assert abs(bf16_losses[-40:].mean() - f32_losses[-40:].mean()) <= 0.1 * f32_losses[-40:].mean()
