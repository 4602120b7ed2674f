"""Device mesh, shardings and multi-host helpers.

One mesh axis, "data", over every device of every process. Batches are sharded along it; parameters
and optimizer state are replicated, or with FSDP sharded along their largest dimension that divides
evenly.
"""

from __future__ import annotations

import os

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


DEFAULT_COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ddpm_jax", "jax_cache")


def use_compilation_cache(directory: str | None) -> str | None:
  """Turns on JAX's persistent compilation cache in `directory` (None: $JAX_COMPILATION_CACHE_DIR,
  else DEFAULT_COMPILATION_CACHE; "": off), for every program that takes a second or more to
  compile. -> the directory used, or None."""
  if directory is None:
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_COMPILATION_CACHE
  if not directory:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return directory


def slurm_local_device_ids(env=os.environ) -> list[int] | None:
  """The GPUs of this SLURM task as its process numbers them: all it sees where SLURM (or
  launch/slurm.py) bound GPUs to the task with CUDA_VISIBLE_DEVICES; None elsewhere. JAX's cluster
  detection would take [SLURM_LOCALID], a GPU that a task seeing one GPU does not have (jax issues
  #23452, #28194)."""
  visible = env.get("CUDA_VISIBLE_DEVICES")
  if "SLURM_JOB_ID" not in env or not visible:
    return None
  return list(range(len(visible.split(","))))


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """`jax.distributed.initialize` for multi-host runs: explicit coordinator flags, or auto-detected
  on TPU pods and SLURM clusters. A no-op for a single local process."""
  local_device_ids = slurm_local_device_ids()
  if coordinator_address is not None:
    jax.distributed.initialize(
      coordinator_address, num_processes, process_id, local_device_ids=local_device_ids
    )
  elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    # cluster detection reads SLURM's environment
    jax.distributed.initialize(local_device_ids=local_device_ids)
  elif "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]:
    jax.distributed.initialize()
  else:
    return
  logging.info(
    "Process %d of %d, %d local / %d global devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int) -> P:
  """Shard the largest axis that `num_shards` divides; replicate small or indivisible arrays."""
  if num_shards == 1 or not shape or np.prod(shape) < 2**14:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_shards == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool):
  """A sharding for every leaf of a (shape-only) train state."""
  num_shards = mesh.shape[DATA_AXIS]

  def leaf_sharding(leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, fsdp_spec(shape, num_shards) if fsdp else P())

  return jax.tree_util.tree_map(leaf_sharding, abstract_state)


def to_host(x) -> np.ndarray:
  """A global jax array, or this process's rows of one as numpy, -> the whole array as numpy on
  every process (a collective when there are several processes)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def global_batch(
  local_batch: dict[str, np.ndarray], sharding: NamedSharding
) -> dict[str, jax.Array]:
  """This process's rows -> one global array per entry, sharded along the batch axis over the
  mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
