"""Every field of every shipped config overridden with a wrong type, zero, a negative, an empty or
an out-of-range value: refused on assignment (a typed field: the command line's flag error) or by
`validate_config` with one line naming the field, before anything compiles; or legal, and then the
config's train state and step still trace (`jax.eval_shape`)."""

import copy
import importlib
import math
import os
import sys

import jax
import ml_collections
import pytest

from ddpm_jax.families import config_validation
from helpers import REPO

sys.path.insert(0, REPO)
SHIPPED = sorted(
  name[:-3]
  for name in os.listdir(os.path.join(REPO, "configs"))
  if name.endswith(".py") and name not in ("__init__.py", "workdir.py")
)


def leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def field_type(config, field):
  block, _, name = field.rpartition(".")
  parent = config[block] if block else config
  reference = parent._fields[name]  # a placeholder's type where its value is None
  if isinstance(reference, ml_collections.FieldReference):
    return reference.get_type()
  return type(reference)


def bad_values(kind):
  """The values tried for a field of type `kind`."""
  if kind is bool:
    return ["yes", 2]
  if kind is int:
    return [0, -1, 10**9 * -1, "many"]
  if kind is float:
    return [0.0, -1.0, math.nan, math.inf, "much"]
  if kind is str:
    return ["", "no-such-choice", 3]
  if kind is tuple:
    return [(), ("x",), 5]
  return []


def assign(config, field, value) -> bool:
  """Sets `field`; False where the typed ConfigDict refuses the value (as the flag parser does)."""
  block, _, name = field.rpartition(".")
  try:
    (config[block] if block else config)[name] = value
  except (TypeError, ValueError):
    return False
  return True


def outcome(config):
  """None (valid) or the InvalidConfigError's message; anything else raised fails the test."""
  try:
    config_validation.validate_config(config)
  except config_validation.InvalidConfigError as error:
    return str(error)
  return None


def cases():
  for name in SHIPPED:
    config = importlib.import_module(f"configs.{name}").get_config()
    for field, _ in leaves(config):
      yield name, field, field_type(config, field)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_bad_value_of_every_field_is_refused_naming_it_or_legal(name):
  base = importlib.import_module(f"configs.{name}").get_config()
  assert outcome(base) is None or "devices" in outcome(base), outcome(base)
  unnamed = []
  for field, _ in leaves(base):
    for value in bad_values(field_type(base, field)):
      config = copy.deepcopy(base)  # (resolving references would drop the placeholders' types)
      if not assign(config, field, value):
        continue
      try:
        message = outcome(config)
      except Exception as error:  # noqa: BLE001  (a crash inside a check: reported as one)
        unnamed.append(f"{field}={value!r}: crashed with {type(error).__name__}: {error}")
        continue
      if message is not None and ("\n" in message or field not in message):
        unnamed.append(f"{field}={value!r}: {message}")
  assert not unnamed, "\n".join(unnamed)


def traces_a_train_step(config) -> str | None:
  """None, or the error of tracing (not compiling) the train state and step of `config`."""
  import jax.numpy as jnp

  from ddpm_jax import train
  from ddpm_jax.jobs import train_state

  data, batch_size = config.data, config.training.batch_size
  if config.model.get("conv_impl") == "auto":  # as on accelerators: the CPU's Winograd
    config.model.conv_impl = "xla"  # convolutions (tested in test_models) triple a deep trace
  batch = {
    "image": jax.ShapeDtypeStruct(
      (batch_size, data.image_size, data.image_size, data.num_channels), jnp.float32
    ),
    "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
  }
  if config.family == "prior":  # vectors, of the width its data file would give
    config.prior.embedding_dim = config.prior.embedding_dim or 8
    batch = {
      "embedding": jax.ShapeDtypeStruct((batch_size, config.prior.embedding_dim), jnp.float32),
      "label": batch["label"],
    }
  try:
    state = jax.eval_shape(lambda rng: train_state.init_train_state(config, rng), jax.random.key(0))
    jax.eval_shape(train.make_train_step(config), state, batch, jax.random.key(1))
  except Exception as error:  # noqa: BLE001
    return f"{type(error).__name__}: {error}"
  return None


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_the_legal_values_of_every_field_still_trace_a_train_step(name):
  base = importlib.import_module(f"configs.{name}").get_config()
  legal = []  # the first legal value of each field
  for field, _ in leaves(base):
    for value in bad_values(field_type(base, field)):
      config = copy.deepcopy(base)
      if assign(config, field, value) and outcome(config) is None:
        legal.append((field, value))
        break
  assert len(legal) > 10
  # All the values that are legal together in one trace (a paper model's costs seconds); the
  # others, or all of them where that trace fails, one by one.
  together, alone = copy.deepcopy(base), []
  for field, value in legal:
    trial = copy.deepcopy(together)
    if assign(trial, field, value) and outcome(trial) is None:
      together = trial
    else:
      alone.append((field, value))
  if traces_a_train_step(together) is not None:
    alone = legal
  failures = []
  for field, value in alone:
    config = copy.deepcopy(base)
    assign(config, field, value)
    error = traces_a_train_step(config)
    if error is not None:
      failures.append(f"{field}={value!r}: {error}")
  assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
  "override,message",
  [
    ("--config.training.batch_size=0", "Invalid config: training.batch_size=0 must be >= 1."),
    # more than the digits' training split: refused when the data are opened, before compiling
    ("--config.training.batch_size=4096", "fewer than one global batch of 4096"),
  ],
)
@pytest.mark.slow
def test_the_command_line_prints_a_config_error_alone(tmp_path, override, message):
  import subprocess

  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "ddpm_jax.main",
      "--config=configs/default.py",
      f"--workdir={tmp_path}",
      "--config.data.num_workers=0",
      override,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert run.returncode == 1
  assert "Traceback" not in run.stderr and message in run.stderr.strip().splitlines()[-1]
