"""Every family through the one interface: a few train steps of its shipped offline config (shrunk),
a batch of samples, an inpainting and bits/dim, equal to what the code before the family refactor
computed; and the package's imports point one way, with no cycle."""

import ast
import importlib
import os
import sys

import jax
import numpy as np
import pytest

from ddpm_jax import editing, families
from ddpm_jax.data import loader
from ddpm_jax.families import config_validation
from ddpm_jax.jobs import evaluate
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.runtime import parallel
from helpers import REPO, flat_params, run_steps

PACKAGE = os.path.join(REPO, "ddpm_jax")
# The shipped offline config of each family (the score SDEs: all three), run shrunk by
# `shrunk_config`.
OFFLINE_CONFIGS = [
  "default",
  "classifier_default",
  "sde_vp_default",
  "sde_subvp_default",
  "sde_ve_default",
  "vdm_default",
  "ardm_default",
]
# Their values from the code before the families existed (commit 856ff68, recorded on an AMD
# EPYC with jaxlib 0.10.2, bitwise equal there after the refactor): 3 losses, parameter sums,
# EMA samples, held-out bits/dim.
GOLDEN = os.path.join(REPO, "tests", "golden", "families.npz")


def shrunk_config(name):
  sys.path.insert(0, REPO)
  config = importlib.import_module(f"configs.{name}").get_config()
  config.model.ch_mult, config.model.attn_resolutions = (1,), ()
  if "diffusion" in config:
    config.diffusion.num_timesteps = 30
  if config.family == "score_sde":
    config.sde.num_scales = 25
  config.training.batch_size, config.optim.warmup_steps = 8, 0
  # score SDEs: predictor-corrector on sde.num_scales steps, as recorded
  config.sampling.num_steps = 4 if config.family not in ("ardm", "score_sde") else None
  config.eval.bpd_num_batches = 1
  config.model.conv_impl = "xla"  # as when the golden values were recorded
  return config


# Tolerances per value: XLA:CPU vectorises reductions by the CPU's vector units, which differ
# between machines of one model name, and Adam's first updates (≈ ±lr · sign(g)) turn round-off in a
# near-zero gradient into a whole ±lr step of that weight; the parameter sums and the samples made
# from them carry that. A change of the computation moves them by far more.
TOLERANCES = {"losses": 1e-4, "bpd": 1e-3, "param_sums": 5e-2, "samples": 5e-2}


def assert_golden(name, key, value):
  expected = np.load(GOLDEN)[f"{name}/{key}"]
  tolerance = TOLERANCES[key]
  np.testing.assert_allclose(
    value, expected, rtol=tolerance, atol=tolerance, err_msg=f"{name}/{key}"
  )


# Families added after the refactor (no golden values from before it; their own tests have oracles)
NEW_FAMILY_CONFIGS = ["super_res_default", "edm_default", "representation_default", "prior_default"]
NEW_FAMILY_CONFIGS += ["flow_default", "dit_default", "autoencoder_default"]
NEW_FAMILY_CONFIGS += ["distill_progressive_default"]


def test_every_family_has_a_shipped_offline_config():
  shipped = OFFLINE_CONFIGS + NEW_FAMILY_CONFIGS
  assert {shrunk_config(name).family for name in shipped} == set(families.FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_CONFIGS)
def test_family_trains_samples_and_measures_bits_per_dim_as_before_the_refactor(name, tmp_path):
  config = shrunk_config(name)
  config_validation.validate_config(config)
  family = families.get_family(config)
  assert family.name == config.family
  state, losses = run_steps(config, 3)
  assert int(state.step) == 3 and np.all(np.isfinite(losses)), losses
  params = flat_params(state.params)
  assert_golden(name, "losses", np.asarray(losses, np.float32))
  assert_golden(
    name, "param_sums", np.asarray([params[k].sum(dtype=np.float64) for k in sorted(params)])
  )
  mesh = parallel.make_mesh()
  if family.make_sampler is not None:
    images = np.asarray(jax.jit(family.make_sampler(4))(state.ema_params, jax.random.key(0), None))
    assert images.shape == (4, 8, 8, 1)
    assert_golden(name, "samples", images)
    # The evaluation's sampler runs sample i on key i alone: the family's sampler on one image
    # (except where a step takes statistics over the batch: score_sde's Langevin corrector,
    # tested in test_sde.py).
    keyed = sample_lib.make_sample_fn(family, 4, mesh)(state.ema_params, jax.random.key(0), None)
    single = jax.jit(family.make_sampler(1))
    batch_statistics = config.family == "score_sde" and config.sampling.corrector == "langevin"
    for i in () if batch_statistics else (0, 3):
      np.testing.assert_allclose(
        keyed[i],
        single(state.ema_params, jax.random.fold_in(jax.random.key(0), i), None)[0],
        rtol=1e-4,  # the same computation batched differently: round-off only
        atol=1e-5,
      )
  if family.make_trajectory is not None:  # editing on the configured sampler: known part kept
    x_known = jax.random.uniform(jax.random.key(3), (2, 8, 8, 1), minval=-1.0, maxval=1.0)
    mask, trajectory_fn = editing.region_mask("center", 8), family.make_trajectory()
    inpaint = jax.jit(
      lambda params: editing.inpaint_along(trajectory_fn(params), jax.random.key(4), x_known, mask)
    )
    out = np.asarray(inpaint(state.ema_params))
    known = np.broadcast_to(mask, out.shape) == 1
    np.testing.assert_array_equal(out[known], np.asarray(x_known)[known])
    assert np.all(np.isfinite(out)) and np.any(out[~known] != np.asarray(x_known)[~known])
  if family.bits_per_dim is not None:
    bpd = evaluate.held_out_bits_per_dim(config, state.ema_params, mesh, str(tmp_path))
    assert 0 < bpd < 30, bpd  # untrained, yet a proper bound of 8-bit data
    assert_golden(name, "bpd", np.asarray(bpd))
  # Without dropout the loss is deterministic (the held-out evaluation's); draws have the batch's
  # shape.
  batch = next(loader.batches(config.data, split="train", global_batch_size=8, seed=0, num_steps=1))
  draws = family.draw(families.step_keys(jax.random.key(2)), batch, None)
  assert draws["weight"].shape == draws["t_fraction"].shape == (8,)
  assert np.all((np.asarray(draws["t_fraction"]) >= 0) & (np.asarray(draws["t_fraction"]) <= 1))
  loss_fn = jax.jit(family.loss)  # (eagerly, the U-Net costs seconds of op-by-op dispatch)
  first, second = (np.asarray(loss_fn(state.params, batch, draws, None)) for _ in range(2))
  np.testing.assert_array_equal(first, second)
  assert first.shape == (8,)


def _module_name(path):
  relative = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def _is_module(name):
  base = os.path.join(REPO, *name.split("."))
  return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def import_graph():
  """Module -> the ddpm_jax modules it imports anywhere in its file (inside functions too); the
  family registry's modules count as imports of ddpm_jax.families."""
  graph = {}
  for root, _, names in os.walk(PACKAGE):
    for file_name in names:
      if not file_name.endswith(".py"):
        continue
      path = os.path.join(root, file_name)
      module, edges = _module_name(path), set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
          edges |= {alias.name for alias in node.names if alias.name.startswith("ddpm_jax")}
        elif (
          isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm_jax")
        ):
          for alias in node.names:
            child = f"{node.module}.{alias.name}"
            edges.add(child if _is_module(child) else node.module)
      graph[module] = edges - {module}
  graph["ddpm_jax.families"] |= {f"ddpm_jax.families.{m}" for m in families.FAMILIES.values()}
  return graph


def test_no_import_cycles():
  graph, state, cycles = import_graph(), {}, []

  def visit(module, path):
    state[module] = "open"
    for dep in sorted(graph.get(module, ())):
      if state.get(dep) == "open":
        cycles.append(path[path.index(dep) :] + [dep])
      elif dep not in state:
        visit(dep, path + [dep])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, cycles


# The folders are the layers: a module may import its own layer and those below. The root holds the
# math (public, paper notation) and the entry points above everything; runtime/ holds utilities
# that any layer may use and that import nothing else of the package.
ENTRY_POINTS = {"main", "pipeline", "train", "dataset_tool"}
LAYERS = {"math": 0, "models": 1, "data": 1, "evaluation": 1, "families": 2, "jobs": 3}
LAYERS |= {"convert": 3, "entry": 4}


def _layer(module):
  parts = module.split(".")
  if len(parts) == 1 or parts[1] == "runtime":
    return None
  if len(parts) == 2 and not _is_package(module):
    return LAYERS["entry" if parts[1] in ENTRY_POINTS else "math"]
  return LAYERS[parts[1]]  # a folder not in LAYERS fails here: give it a layer


def _is_package(module):
  return os.path.isfile(os.path.join(REPO, *module.split("."), "__init__.py"))


def test_every_module_has_a_layer_and_the_root_stays_small():
  graph = import_graph()
  for module in graph:
    _layer(module)
  root = [name for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py"]
  assert len(root) <= 16, sorted(root)


# what a weight mapping may import: it reads arrays by name (numpy), so that it runs and is read
# without JAX; convert/fit.py meets the model
MAPPING_IMPORTS = {"__future__", "absl", "collections", "dataclasses", "json", "ml_collections"}
MAPPING_IMPORTS |= {"numpy", "os", "pickle", "safetensors", "torch", "typing"}


def test_the_weight_mappings_import_only_numpy():
  convert_dir = os.path.join(PACKAGE, "convert")
  not_mappings = {"__init__.py", "__main__.py", "fit.py", "presets.py"}
  mappings = sorted(
    name for name in os.listdir(convert_dir) if name.endswith(".py") and name not in not_mappings
  )
  found = {}
  for file_name in mappings:
    imported = set()
    for node in ast.walk(ast.parse(open(os.path.join(convert_dir, file_name)).read())):
      if isinstance(node, ast.Import):
        imported |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom):
        imported.add(node.module)
    found[file_name] = {
      name
      for name in imported
      if name.split(".")[0] not in MAPPING_IMPORTS
      and name.removeprefix("ddpm_jax.convert.") + ".py" not in mappings
    }
  assert "guided_diffusion.py" in found and "diffusers.py" in found
  assert not any(found.values()), found


def test_runtime_utilities_import_only_runtime():
  leaks = {
    (module, dep)
    for module, deps in import_graph().items()
    if module.startswith("ddpm_jax.runtime")
    for dep in deps
    if not dep.startswith("ddpm_jax.runtime")
  }
  assert not leaks, leaks


def test_dependencies_point_down():
  upward = [
    (module, dep)
    for module, deps in import_graph().items()
    for dep in deps
    if _layer(module) is not None and _layer(dep) is not None and _layer(dep) > _layer(module)
  ]
  assert not upward, upward
  # The math and the models stay apart: no diffusion in a network, no Flax module in the math.
  graph = import_graph()
  math = {m for m in graph if _layer(m) == LAYERS["math"]}
  assert not {d for m in graph if m.startswith("ddpm_jax.models") for d in graph[m]} & math
  assert not {d for m in math for d in graph[m]} - math - {"ddpm_jax.runtime.errors"}
