"""Stopping a run cleanly: SIGTERM (a preempted Cloud TPU VM gets ~30 s notice) or Ctrl-C asks the
trainer to finish its step, save, and exit; a second signal aborts at once.

With several processes the stop must happen at the same step everywhere, so no Python handler is
installed there: JAX's distributed runtime catches SIGTERM itself, propagates the notice to every host and
`reached_preemption_sync_point` agrees on the step (not exercised by the tests here: they run one process).
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Records the first SIGTERM/SIGINT while installed; the second one gets the default behaviour."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  def install(self) -> None:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    if self.signum is not None:  # second signal: abort now
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signum = signum

  def should_stop(self, step: int) -> bool:
    """True when this run should stop after `step` (the same step on every process)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else "a preemption notice"

  @property
  def exit_code(self) -> int:
    """128 + the signal number, as a shell reports a process ended by that signal."""
    return 128 + (self.signum or signal.SIGTERM)
