"""Checkpoints in `workdir/checkpoints` with orbax: periodic and preemption saves, resume, fallback.

Each step directory holds the train state and the run's config (JSON). Orbax writes a step to a
temporary directory and renames it when complete, so a process killed mid-save leaves no
half-written step behind; if the newest step still cannot be read (a damaged disk, a partial copy),
`restore_latest` warns and falls back to the one before.
"""

from __future__ import annotations

import json
import os
import signal
import threading

from absl import logging
import jax
import orbax.checkpoint as ocp


def quiet_orbax_info_logs() -> None:
  """Orbax logs every file it renames at INFO; keep its warnings and errors only."""
  import logging as std_logging

  handler = logging.get_absl_handler()
  handler.addFilter(
    lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname
  )


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (the previous ones are untouched)."""


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` with the fallback restore this project needs."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    quiet_orbax_info_logs()
    # Bucket paths (gs://…) as they are; local ones absolute, as orbax wants.
    self.directory = os.path.join(
      workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints"
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
      item_names=("state", "config"),
    )
    self.pending_step = None  # the step whose (asynchronous) save may still be running

  def save(self, step: int, state, config) -> None:
    """Starts saving `step`. Raises CheckpointSaveError where this save or the one still pending
    fails: a run must not train on without its checkpoints."""
    self.wait_until_saved()
    config_json = (
      json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
    )
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)
        ),
        force=True,
      )
    except Exception as error:
      raise self._save_error(step, error) from error
    self.pending_step = step

  def wait_until_saved(self) -> None:
    """Waits for the pending save; CheckpointSaveError where it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as error:
      raise self._save_error(self.pending_step, error) from error
    self.pending_step = None

  def _save_error(self, step: int | None, error: Exception) -> CheckpointSaveError:
    return CheckpointSaveError(
      f"Saving the checkpoint of step {step} in {self.directory} failed ({type(error).__name__}: "
      f"{error}); stopping rather than training on without checkpoints. The newest complete "
      f"checkpoint is step {self.manager.latest_step()}."
    )

  def stored_config(self, step: int) -> dict | None:
    """The config JSON saved with `step` (None where it cannot be read)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        "config"
      ]
    except Exception:  # noqa: BLE001  (a damaged step: no config to compare)
      return None

  def restore_latest(self, abstract_state, config=None, only_step: int | None = None):
    """-> (state, step) from the newest readable step, or (None, None) if there are no checkpoints.

    `abstract_state` gives shapes, dtypes and shardings (e.g. `jax.eval_shape` output with
    `.sharding`). Raises if there are checkpoints but none can be read: starting afresh would
    overwrite them. `only_step`: that step's checkpoint (FileNotFoundError where it is not kept).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if only_step is not None:
      if only_step not in steps:
        raise FileNotFoundError(f"No checkpoint of step {only_step} in {self.directory}: {steps}.")
      steps = [only_step]
    for step in steps:
      try:
        restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
      except Exception as e:  # any unreadable step: fall back to the previous one
        logging.warning(
          "Checkpoint at step %d in %s cannot be read (%s: %s); trying the previous one.",
          step,
          self.directory,
          type(e).__name__,
          e,
        )
        continue
      logging.info("Restored step %d from %s.", step, self.directory)
      return restored["state"], step
    if steps:
      stored = next(filter(None, map(self.stored_config, steps)), None)
      differing = [] if stored is None or config is None else differing_fields(stored, config)
      cause = (
        f"it was written by another config: {'; '.join(differing)}"
        if differing
        else "see the warnings above: was the run made with another config or code version?"
      )
      raise RuntimeError(
        f"None of the checkpoints {steps} in {self.directory} can be read into this config's train "
        f"state ({cause}). Nothing was overwritten; use another --workdir to start afresh."
      )
    return None, None

  def close(self) -> None:
    try:
      self.wait_until_saved()
    finally:
      self.manager.close()


# the blocks that choose how a run goes, not what its train state is
RUN_BLOCKS = ("training", "sampling", "eval", "edit", "interpolate", "seed")


def _flat(tree, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def differing_fields(stored: dict, config) -> list[str]:
  """'field: stored value (the checkpoint's) -> this config's' for each field outside `RUN_BLOCKS`
  where the stored config JSON and `config` differ."""
  current, stored = _flat(json.loads(config.to_json_best_effort())), _flat(stored)
  value = lambda fields, field: repr(fields[field]) if field in fields else "(unset)"
  return [
    f"{field} {value(stored, field)} in the checkpoint, {value(current, field)} here"
    for field in sorted(set(stored) | set(current))
    if field.split(".")[0] not in RUN_BLOCKS and stored.get(field) != current.get(field)
  ]


class PreemptionFlag:
  """Set by SIGTERM (how TPU and SLURM announce a preemption); the train loop saves and exits when
  set.

  Multi-process runs agree on it by a host collective, taken only every `check_every` steps (the
  same steps on every process) so that the hot loop does not synchronise the hosts each step."""

  def __init__(self, check_every: int = 10):
    self.event = threading.Event()
    self.check_every = check_every
    # signal handlers live in the main thread
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.event.set()

  def is_set(self, step: int) -> bool:
    """True on every process, at the first check after any process was signalled."""
    if jax.process_count() == 1:
      return self.event.is_set()
    if step % self.check_every:
      return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(jax.numpy.array(self.event.is_set())).any())
