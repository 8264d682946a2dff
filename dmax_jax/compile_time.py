"""Seconds this process has spent compiling (tracing, lowering, XLA compilation), from jax.monitoring events:
subtract two readings to split a first call's wall time into compile and run."""

from __future__ import annotations

_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
           "/jax/core/compile/backend_compile_duration")
_total = [0.0]
_listening: list[bool] = []


def _record(event: str, seconds: float, **_) -> None:
  if event in _EVENTS:
    _total[0] += seconds


def compile_seconds() -> float:
  """Cumulative compile seconds since the first call (which starts listening)."""
  if not _listening:
    import jax
    jax.monitoring.register_event_duration_secs_listener(_record)
    _listening.append(True)
  return _total[0]
