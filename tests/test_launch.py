"""Launchers and sweeps: the commands they generate for a given environment, without running a
cluster."""

import os
import subprocess
import sys
import types

import pytest

from helpers import REPO

sys.path.insert(0, REPO)
from launch import local, slurm, sweep, tpu_pod  # noqa: E402


def test_sweep_product_zip_and_literal_values():
  sweeps = [
    sweep.parse_sweep("optim.lr=[1e-4,2e-4]"),
    sweep.parse_sweep("diffusion.loss_type=[mse,hybrid]"),
  ]
  assert sweeps[0] == ("optim.lr", [1e-4, 2e-4]) and sweeps[1] == (
    "diffusion.loss_type",
    ["mse", "hybrid"],
  )
  runs = sweep.expand(sweeps)
  assert runs == [
    {"optim.lr": 1e-4, "diffusion.loss_type": "mse"},
    {"optim.lr": 1e-4, "diffusion.loss_type": "hybrid"},
    {"optim.lr": 2e-4, "diffusion.loss_type": "mse"},
    {"optim.lr": 2e-4, "diffusion.loss_type": "hybrid"},
  ]
  assert sweep.expand(sweeps, zip_values=True) == [
    {"optim.lr": 1e-4, "diffusion.loss_type": "mse"},
    {"optim.lr": 2e-4, "diffusion.loss_type": "hybrid"},
  ]
  key, values = sweep.parse_sweep("model.ch_mult=[(1,2),(1,2,2)]")
  assert values == [(1, 2), (1, 2, 2)]
  assert sweep.parse_sweep("sampling.sampler='ddim'") == ("sampling.sampler", ["ddim"])
  assert sweep.parse_sweep('data.dataset=["a,b", c]')[1] == ["a,b", "c"]
  with pytest.raises(ValueError, match="equal length"):
    sweep.expand([sweeps[0], sweep.parse_sweep("x.y=[1,2,3]")], zip_values=True)
  with pytest.raises(ValueError, match="dotted.key"):
    sweep.parse_sweep("lr 1e-4")


def test_sweep_names_and_quoted_commands():
  runs = [{"optim.lr": 1e-4, "model.ch_mult": (1, 2)}, {"optim.lr": 2e-4, "model.ch_mult": (1,)}]
  assert [sweep.run_name(r) for r in runs] == ["lr=0.0001_ch_mult=1,2", "lr=0.0002_ch_mult=1"]
  assert sweep.run_name({"data.data_dir": "/a b/c"}) == "data_dir=-a-b-c"
  cmds = sweep.commands("configs/default.py", "runs/s", runs, ["--mode=eval"], python="python")
  assert cmds[1] == [
    "python",
    "-m",
    "ddpm_jax.main",
    "--config=configs/default.py",
    "--workdir=runs/s/lr=0.0002_ch_mult=1",
    "--config.optim.lr=0.0002",
    "--config.model.ch_mult=(1,)",
    "--mode=eval",
  ]
  with pytest.raises(ValueError, match="share a workdir"):
    sweep.commands("c.py", "r", [{"a.x": 1}, {"b.x": 1}])


def test_sweep_file_and_printed_commands_parse_as_configs(monkeypatch):
  monkeypatch.chdir(REPO)
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.sweep",
      "--config",
      "configs/default.py",
      "--sweep_file",
      "configs/sweeps/iddpm_ablations.py",
      "--sweep",
      "optim.lr=[1e-4,2e-4]",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()
  assert len(out) == 8 and all("--config.diffusion.beta_schedule=" in line for line in out)
  # The overrides apply as main.py would apply them (ml_collections' flag syntax, shell quoting).
  import shlex

  args = shlex.split(out[3])  # linear schedule, hybrid loss, lr 2e-4
  config = tpu_pod.load_config("configs/default.py", args)
  assert (
    config.diffusion.loss_type == "hybrid"
    and config.optim.lr == 2e-4
    and config.model.out_channels == 2
  )


SLURM_ENV = {
  "SLURM_JOB_NODELIST": "gpu[07-08,12]",
  "SLURM_NTASKS": "24",
  "SLURM_PROCID": "9",
  "SLURM_LOCALID": "1",
  "SLURM_JOB_ID": "123456",
}


def test_slurm_task_command_from_the_environment():
  assert slurm.first_host("gpu[07-08,12]") == "gpu07"
  assert slurm.first_host("node3,node4") == "node3" and slurm.first_host("a[5]") == "a5"
  command, env = slurm.task_command(SLURM_ENV, ["--config=c.py", "--workdir=w"], python="python")
  assert command == [
    "python",
    "-m",
    "ddpm_jax.main",
    "--config=c.py",
    "--workdir=w",
    "--coordinator_address=gpu07:15456",
    "--num_processes=24",
    "--process_id=9",
  ]
  assert env["CUDA_VISIBLE_DEVICES"] == "1"
  # SLURM bound one GPU already
  _, env = slurm.task_command({**SLURM_ENV, "CUDA_VISIBLE_DEVICES": "3"}, [])
  assert env["CUDA_VISIBLE_DEVICES"] == "3"
  with pytest.raises(RuntimeError, match="SLURM_PROCID"):
    slurm.task_command({k: v for k, v in SLURM_ENV.items() if k != "SLURM_PROCID"}, [])


def test_a_slurm_task_asks_jax_for_the_gpus_it_sees(monkeypatch):
  """JAX's own cluster detection, given SLURM's variables for task 3 of a node bound to one GPU:
  it would ask for local device 3 (which the task cannot see); the ids passed are [0]."""
  from jax._src import clusters

  from ddpm_jax.runtime import parallel

  slurm_env = {
    "SLURM_JOB_ID": "77",
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "3",
    "SLURM_STEP_NODELIST": "gpu01",
    "SLURM_JOB_NODELIST": "gpu01",
    "CUDA_VISIBLE_DEVICES": "3",
  }
  for name, value in slurm_env.items():
    monkeypatch.setenv(name, value)
  detect = clusters.ClusterEnv.auto_detect_unset_distributed_params
  ids = parallel.slurm_local_device_ids()
  assert ids == [0]
  assert detect("gpu01:12077", 8, 3, ids, None, None)[3] == [0]
  assert detect("gpu01:12077", 8, 3, None, None, None)[3] == [3]  # what JAX alone would ask for
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # a task bound to two GPUs
  assert parallel.slurm_local_device_ids() == [0, 1]
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # every GPU visible: JAX's [SLURM_LOCALID] is right
  assert parallel.slurm_local_device_ids() is None


def test_tpu_worker_counts_devices_and_commands(monkeypatch):
  monkeypatch.chdir(REPO)
  assert [
    tpu_pod.num_workers(a)
    for a in ("v3-8", "v3-32", "v4-8", "v4-32", "v5p-128", "v5litepod-8", "v5litepod-16")
  ] == [1, 4, 1, 4, 16, 1, 4]
  assert [tpu_pod.num_devices(a) for a in ("v3-8", "v4-32", "v5litepod-16")] == [8, 16, 16]
  args, extra = tpu_pod.parse_args(
    [
      "--tpu=pod",
      "--zone=us-central2-b",
      "--accelerator=v4-32",
      "--spot",
      "--config=configs/ddpm_cifar10.py",
      "--workdir=gs://b/run",
      "--repo_url=R",
      "--",
      "--config.training.batch_size=256",
    ]
  )
  tpu_pod.check_batch_size(args, extra)
  train = tpu_pod.train_command(args, extra)
  assert train[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-central2-b"]
  assert train[7] == "--worker=all" and train[8] == (
    "--command=cd ddpm_jax && python3 -m ddpm_jax.main "
    "--config=configs/ddpm_cifar10.py --workdir=gs://b/run "
    "--config.training.batch_size=256"
  )
  assert tpu_pod.create_command(args)[-1] == "--spot"
  setup = tpu_pod.setup_command(args)[-1]
  # JAX for TPUs, and the gs:// backend the bucket workdir needs (setup.py's `gcs` extra).
  assert f"jax[tpu]=={tpu_pod.jax_version()}" in setup and "-e '.[gcs]'" in setup
  with pytest.raises(ValueError, match="16 devices"):
    tpu_pod.check_batch_size(args, ["--config.training.batch_size=100"])
  with pytest.raises(SystemExit):
    tpu_pod.parse_args(
      ["--tpu=p", "--zone=z", "--accelerator=v4-8", "--config=c.py", "--workdir=/local/dir"]
    )


def test_tpu_resume_loop_recreates_a_preempted_pod_and_resumes_until_done():
  args, extra = tpu_pod.parse_args(
    [
      "--tpu=pod",
      "--zone=z",
      "--accelerator=v4-8",
      "--config=c.py",
      "--workdir=gs://b/r",
      "--repo_url=R",
      "--retry_s=0",
    ]
  )
  states = iter(["READY", "PREEMPTED", "READY"])
  train_results = iter([1, 0])  # preempted mid-run, then runs to the end
  calls = []

  def fake_run(cmd, **kwargs):
    calls.append(cmd[4])
    if cmd[4] == "describe":
      return types.SimpleNamespace(returncode=0, stdout=next(states))
    if cmd[4] == "ssh" and "ddpm_jax.main" in cmd[-1]:
      return types.SimpleNamespace(returncode=next(train_results))
    return types.SimpleNamespace(returncode=0)

  assert tpu_pod.resume_loop(args, extra, run=fake_run, sleep=lambda s: None) == 0
  assert calls == ["describe", "ssh", "describe", "delete", "create", "ssh", "ssh"]


def test_local_launcher_builds_one_command_per_process():
  cmds = local.process_commands(
    3,
    4321,
    ["--config=c.py", "--workdir=w"],
    devices_per_process=2,
    python="python",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo"},
  )
  assert [c[0][-1] for c in cmds] == ["--process_id=0", "--process_id=1", "--process_id=2"]
  assert cmds[0][0][:5] == ["python", "-m", "ddpm_jax.main", "--config=c.py", "--workdir=w"]
  assert cmds[0][0][5:7] == ["--coordinator_address=localhost:4321", "--num_processes=3"]
  assert cmds[0][1]["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=2"


@pytest.mark.slow
def test_shipped_configs_run_by_name_and_install_with_the_package(tmp_path):
  from ddpm_jax import main

  argv = main.shipped_config_paths(["main", "--config=ddpm_cifar10", "--workdir=w", "--mode=eval"])
  assert argv[1] == f"--config={os.path.join(REPO, 'configs', 'ddpm_cifar10.py')}" and argv[2:] == [
    "--workdir=w",
    "--mode=eval",
  ]
  assert main.shipped_config_paths(["main", "--config=configs/default.py"])[1] == (
    "--config=configs/default.py"
  )
  assert (
    main.shipped_config_paths(["main", "--config=no_such_config"])[1] == "--config=no_such_config"
  )
  # A wheel (what `pip install git+…` builds) carries the configs.
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "-q",
      "-w",
      str(tmp_path),
      REPO,
    ],
    check=True,
    capture_output=True,
  )
  import zipfile

  (wheel,) = tmp_path.glob("ddpm_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "configs/ddpm_cifar10.py" in names and "configs/default.py" in names
