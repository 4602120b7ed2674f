"""Golden values of every offline set-up, recorded before the family refactor (issue 21) and compared after:
the losses of the first train steps, a batch of EMA samples and the bits/dim of one test batch.

On the CPU model and jaxlib they were recorded with, the values must be equal bitwise (the computation is
the same); elsewhere XLA may vectorise reductions differently, so to 1e-4 relative.

  python tests/test_golden.py --record      # rewrites tests/golden/golden_values.npz (only on purpose)
"""
import os
import platform
import sys
import tempfile

import jax
import numpy as np
import pytest

from helpers import REPO, flat_params, run_steps, tiny_config

GOLDEN_PATH = os.path.join(REPO, "tests", "golden", "golden_values.npz")
NUM_STEPS = 3


def machine():
  """The CPU model and jaxlib version, which decide XLA:CPU's float rounding."""
  import jaxlib
  model = platform.processor()
  if os.path.exists("/proc/cpuinfo"):
    lines = [l for l in open("/proc/cpuinfo") if l.startswith("model name")]
    model = lines[0].split(":", 1)[1].strip() if lines else model
  return f"{model}; jaxlib {jaxlib.__version__}"


def golden_config(name):
  """The shipped offline config `name` (or the noisy classifier on the default's data), shrunk to seconds."""
  sys.path.insert(0, REPO)
  import importlib
  if name == "classifier":
    config = tiny_config()
    config.family, config.model.name, config.model.num_classes = "classifier", "classifier", 10
    del config.model.out_channels, config.model.progressive
    config.model.num_head_channels = 32
  else:
    config = importlib.import_module(f"configs.{name}").get_config()
  config.diffusion.num_timesteps = 50
  config.sde.num_scales = 25
  config.training.batch_size = 8
  config.sampling.num_steps = 5 if name != "ardm_default" else None
  config.eval.bpd_num_batches = 1
  return config


NAMES = ["default", "ardm_default", "sde_vp_default", "sde_subvp_default", "sde_ve_default", "vdm_default",
         "classifier"]


def compute(name):
  from ddpm_jax import families, parallel
  from ddpm_jax.evaluation import evaluate
  from ddpm_jax.evaluation import sample as sample_lib
  config = golden_config(name)
  state, losses = run_steps(config, NUM_STEPS)
  params = flat_params(state.params)
  values = {"losses": np.asarray(losses, np.float32),
            "param_sums": np.asarray([params[k].sum(dtype=np.float64) for k in sorted(params)])}
  if name == "classifier":
    return values
  mesh = parallel.make_mesh()
  sample_fn = sample_lib.make_sample_fn(families.get_family(config), 4, mesh)
  values["samples"] = np.asarray(sample_fn(state.ema_params, jax.random.key(7), None))
  with tempfile.TemporaryDirectory() as workdir:
    values["bpd"] = np.asarray(evaluate.held_out_bits_per_dim(config, state.ema_params, mesh, workdir))
  return values


@pytest.mark.parametrize("name", NAMES)
def test_golden_values(name):
  golden = np.load(GOLDEN_PATH)
  same_machine = str(golden["machine"]) == machine()
  for key, value in compute(name).items():
    expected = golden[f"{name}/{key}"]
    if same_machine:
      np.testing.assert_array_equal(value, expected, err_msg=f"{name}/{key}")
    else:
      np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name}/{key}")


if __name__ == "__main__" and "--record" in sys.argv:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
  np.savez(GOLDEN_PATH, machine=machine(),
           **{f"{name}/{k}": v for name in NAMES for k, v in compute(name).items()})
  print("Wrote", GOLDEN_PATH)
