"""Metrics sinks: JSONL (appended, one object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import os
from typing import Any

from dmax_jax.io import write_text_atomic


class MetricsWriter:
  """Writes `{step, **metrics}` rows to `<dir>/metrics.jsonl` and scalars to TensorBoard (`<dir>/tb`)."""

  def __init__(self, directory: str, tensorboard: bool = True, enabled: bool = True, start_step: int = 0):
    """`start_step`: the step the run (re)starts from; rows logged after it by an interrupted run are
    dropped, since those steps are about to be run again."""
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "metrics.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
      write_text_atomic(path, kept)
    self._jsonl = open(path, "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(directory, "tb"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(f"train/{k}", v, step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
