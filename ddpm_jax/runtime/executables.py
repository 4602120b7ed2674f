"""Compiled executables kept on disk, so that a restarted job loads its train step,
initialisation and samplers instead of tracing, lowering and compiling them again.

JAX's persistent compilation cache saves XLA's compilation only: a warm start still traces the
Python function and lowers it to StableHLO (seconds for a large model) to find its cache key. Here
the key is computed without tracing, from everything that changes the program: the caller's key
(the run's config), this package's source, the JAX and jaxlib versions, the relevant JAX settings
and XLA_FLAGS, the devices and processes, and the arguments' tree, shapes, dtypes and shardings.

  step = executables.compiled(lambda: jax.jit(f), args, name="train_step", key=config_json)
  step(*args)  # a jax.stages.Compiled, loaded from <directory>/train_step-<hash>.bin when there

The directory is `executables/` beside JAX's persistent compilation cache (none: compiled as
usual). A file that cannot be read (another jaxlib, a truncated write) is removed with a warning
and the program compiled again; files are written whole (renamed into place) and the oldest beyond
MAX_FILES are removed. Only executables XLA compiled in this process are saved: one that JAX read
from its own persistent cache does not survive serialisation on XLA:CPU. A program with a host
callback (a sampler's per-step progress) cannot be serialised: its callers compile it as usual.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import pathlib
import pickle
import sys
import threading
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import serialize_executable

MAX_FILES = 64
# JAX settings that change a traced or compiled program
SETTINGS = (
  "jax_enable_x64",
  "jax_default_matmul_precision",
  "jax_default_prng_impl",
  "jax_threefry_partitionable",
)
# seconds spent loading executables in this process (benchmarks/startup.py's floor)
load_seconds = 0.0
# this process's executables by key (as jax.jit keeps its own)
_IN_MEMORY: dict[str, jax.stages.Compiled] = {}


def directory() -> epath.Path | None:
  """`executables/` in JAX's persistent compilation cache directory (None where that is off)."""
  cache = jax.config.jax_compilation_cache_dir
  if not cache or not jax.config.jax_enable_compilation_cache:
    return None
  return epath.Path(cache) / "executables"


@functools.cache
def source_digest() -> str:
  """A digest of this package's Python source: any code change gives new executables."""
  root = pathlib.Path(__file__).parent.parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def environment() -> dict[str, Any]:
  """What besides the source and the arguments changes an executable."""
  import jaxlib

  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "python": sys.version_info[:2],
    "settings": {name: str(getattr(jax.config, name)) for name in SETTINGS},
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "devices": [(d.platform, d.device_kind, d.id, d.process_index) for d in jax.devices()],
    "process": (jax.process_index(), jax.process_count()),
  }


def signature(args: tuple) -> str:
  """The arguments' tree, shapes, dtypes, weak types and shardings, without tracing."""

  def leaf(a):
    sharding = getattr(a, "sharding", None)
    weak = getattr(a, "weak_type", False)
    return (tuple(jax.numpy.shape(a)), str(jax.numpy.result_type(a)), weak, repr(sharding))

  leaves, tree = jax.tree_util.tree_flatten(args)
  return repr((str(tree), [leaf(a) for a in leaves]))


def cache_key(name: str, key: str, args: tuple) -> str:
  parts = json.dumps([name, key, source_digest(), environment(), signature(args)], default=str)
  return hashlib.sha256(parts.encode()).hexdigest()[:32]


def compiled(make_jitted, args: tuple, name: str, key: str) -> jax.stages.Compiled:
  """`make_jitted()` (a `jax.jit` function, built only where it is compiled: building one can
  trace, e.g. shardings from an abstract state) compiled for `args`: loaded from the directory
  where an executable of the same key is there, else lowered, compiled and saved. `key`: what
  changes the program beyond the arguments' shapes (the run's config as JSON)."""
  global load_seconds
  digest = cache_key(name, key, args)
  if digest in _IN_MEMORY:
    return _IN_MEMORY[digest]
  where = directory()
  if where is None:
    _IN_MEMORY[digest] = make_jitted().lower(*args).compile()
    return _IN_MEMORY[digest]
  path = where / f"{name}-{digest}.bin"
  if path.exists():
    start = time.perf_counter()
    try:
      executable = serialize_executable.deserialize_and_load(*pickle.loads(path.read_bytes()))
    except Exception as error:  # noqa: BLE001  (any unreadable file: compiled again)
      logging.warning(
        "Executable %s cannot be loaded (%s: %s); compiling.", path, type(error).__name__, error
      )
      path.unlink(missing_ok=True)
    else:
      load_seconds += time.perf_counter() - start
      logging.info("Loaded the compiled %s from %s.", name, path)
      _IN_MEMORY[digest] = executable
      return executable
  lowered = make_jitted().lower(*args)  # (eager ops while tracing may hit JAX's cache)
  hits = _persistent_cache_hits[threading.get_ident()]
  executable = lowered.compile()
  if _persistent_cache_hits[threading.get_ident()] > hits:
    # XLA:CPU re-serialises an executable read from JAX's cache without its kernels (loading it
    # fails at its first run): only compiled ones are saved
    logging.info("The compiled %s came from JAX's persistent cache: not saved here.", name)
  else:
    try:
      save(executable, path)
    except Exception as error:  # noqa: BLE001  (a cache that cannot be written: only slower)
      logging.warning("Executable %s not saved (%s: %s).", path, type(error).__name__, error)
  _IN_MEMORY[digest] = executable
  return executable


# JAX's persistent compilation cache hits by thread (another thread's, e.g. a checkpoint's writer,
# say nothing of this thread's compilation)
_persistent_cache_hits: collections.Counter[int] = collections.Counter()


def _count_cache_hits(event: str, **kwargs) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _persistent_cache_hits[threading.get_ident()] += 1


jax.monitoring.register_event_listener(_count_cache_hits)


def save(executable: jax.stages.Compiled, path: epath.Path) -> None:
  """Writes `executable` whole (a temporary file renamed into place); keeps the newest MAX_FILES."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.parent / f".{path.name}.{os.getpid()}.tmp"
  partial.write_bytes(pickle.dumps(serialize_executable.serialize(executable)))
  partial.replace(path)
  files = sorted(path.parent.glob("*.bin"), key=lambda p: p.stat().mtime)
  for old in files[:-MAX_FILES]:
    old.unlink(missing_ok=True)
