"""Orbax checkpoints of the train state + the grain iterator, in one step directory.

Each step directory holds `state` (params, buffers, optimizer state, step; sharded arrays) and `data`
(the grain iterator position of every process). Saves are asynchronous and atomic (Orbax writes to a
temporary directory and renames it when complete), so a killed run resumes from the last finished step.
Restoring uses an abstract target that carries the *current* mesh's shardings, so a run can resume on a
different mesh or slice.
"""

from __future__ import annotations

from typing import Any

import grain
import orbax.checkpoint as ocp


def make_manager(directory: str, every_steps: int, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=keep,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
  """Starts an (async) save of `state` and the iterator position at `step`; returns whether it saves."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=grain.checkpoint.CheckpointSave(data_iterator)),
                      force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Any) -> Any:
  """Restores the state onto the shardings of `abstract_state` and rewinds `data_iterator` in place."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored["state"]
