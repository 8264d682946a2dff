"""Metrics sinks: JSONL (appended, one object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import os
from typing import Any


class MetricsWriter:
  """Writes `{step, **metrics}` rows to `<dir>/metrics.jsonl` and scalars to TensorBoard (`<dir>/tb`)."""

  def __init__(self, directory: str, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(directory, exist_ok=True)
    self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(directory, "tb"))

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
