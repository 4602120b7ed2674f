"""CPU hosts: which malloc serves XLA:CPU's per-call temporaries, and whether it keeps them
(benchmarks/README.md).

XLA:CPU allocates each call's temporaries anew (about 1 GB for the CIFAR-10 U-Net's training step at
batch 8, in one block, plus ~10,000 blocks of 64 KB – 16 MB) and frees them after it. glibc's malloc
gives such blocks back to the kernel, so every call faults ~250,000 fresh 4-KiB pages in again: ~5 %
of a CPU training step alone, and up to twice the step when another library has churned memory in
between (PyTorch in the same benchmark process). On GPU/TPU hosts the temporaries live in device
memory and none of this matters.

  "default"    the process's malloc as it is.
  "retained"   glibc kept from returning freed memory (`retain_freed_host_memory`); no faults, but
               its one arena's lock is contended by XLA's worker threads.
  "tbbmalloc"  the process restarted with oneTBB's scalable malloc (the `tbb` wheel, extra `cpu`)
               preloaded, told to cache freed blocks of 8 MiB and more: per-thread caches, a tenth
               of the faults (Linux).

Every choice must be made before JAX's backend starts (before the first `jax.devices()` or
computation).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

from absl import logging

HOST_ALLOCATORS = ("default", "retained", "tbbmalloc")

# The library with the allocator, then the proxy that routes malloc/free/new/delete to it.
TBBMALLOC_LIBRARIES = ("libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2")
# tbbmalloc keeps freed blocks from this size up ("huge") until explicitly cleaned, instead of
# unmapping them in its regular cleanups; read once at its start. The name is the one
# libtbbmalloc.so.2 (2023.2) reads.
TBBMALLOC_HUGE_SIZE_THRESHOLD = ("TBB_MALLOC_SET_HUGE_SIZE_THRESHOLD", str(8 * 2**20))


def use_host_allocator(name: str) -> None:
  """Applies one of `HOST_ALLOCATORS`; call it first thing, since "tbbmalloc" restarts the
  process."""
  if name == "retained":
    if not retain_freed_host_memory():
      logging.warning("host allocator 'retained' has no effect: libc is not glibc.")
  elif name == "tbbmalloc":
    restart_with_tbbmalloc()
  elif name != "default":
    raise ValueError(f"Unknown host allocator {name!r}; one of {HOST_ALLOCATORS}.")


def retain_freed_host_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel; call it
  before JAX's backend starts. Returns False where libc is not glibc.

  One arena (XLA's worker threads create theirs at first use, hence "before the backend starts";
  with two, their heaps were still deleted now and then: glibc maps a block too big for a thread
  arena's 64 MB heap with mmap whatever M_MMAP_MAX says), no mmap'd chunks and no trimming keep the
  pages mapped; the process then holds its peak heap. The one arena's lock is contended by XLA's
  worker threads (8× the context switches), so "tbbmalloc", which caches per thread, is faster
  still.
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except AttributeError:
    return False
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's <malloc.h>
  return all(
    mallopt(option, value) == 1
    for option, value in ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1))
  )


def tbbmalloc_loaded() -> bool:
  """Whether oneTBB's malloc proxy is mapped into this process (Linux)."""
  with open("/proc/self/maps") as maps:
    return TBBMALLOC_LIBRARIES[1] in maps.read()


def restart_with_tbbmalloc() -> None:
  """Replaces this process by the same command (same interpreter, arguments and environment) with
  the `tbb` wheel's malloc preloaded, unless it is loaded already. Output written so far is flushed;
  nothing else of the running process survives, so call it before any work."""
  if not sys.platform.startswith("linux"):
    raise RuntimeError("host allocator 'tbbmalloc' is preloaded with LD_PRELOAD, on Linux only.")
  if tbbmalloc_loaded():
    return
  preload = os.environ.get("LD_PRELOAD", "")
  if TBBMALLOC_LIBRARIES[1] in preload:  # a restart that did not take: do not loop
    raise RuntimeError(
      f"LD_PRELOAD={preload!r} names tbbmalloc, but the dynamic loader did not load it."
    )
  try:
    files = importlib.metadata.files("tbb") or []
  except importlib.metadata.PackageNotFoundError:
    raise RuntimeError(
      "host allocator 'tbbmalloc' needs the `tbb` wheel: pip install -e '.[cpu]' (Linux x86-64), "
      "or choose 'retained'."
    ) from None
  paths = {
    file.name: str(file.locate().resolve()) for file in files if file.name in TBBMALLOC_LIBRARIES
  }
  if set(paths) != set(TBBMALLOC_LIBRARIES):
    raise RuntimeError(
      f"The installed `tbb` package lacks {sorted(set(TBBMALLOC_LIBRARIES) - set(paths))}."
    )
  env = dict(
    os.environ, LD_PRELOAD=" ".join([paths[name] for name in TBBMALLOC_LIBRARIES] + preload.split())
  )
  env.setdefault(*TBBMALLOC_HUGE_SIZE_THRESHOLD)
  logging.info("Restarting with tbbmalloc preloaded: LD_PRELOAD=%s", env["LD_PRELOAD"])
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
