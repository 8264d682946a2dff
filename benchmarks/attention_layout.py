#!/usr/bin/env python
"""Decode attention of the mid model (8 layers, batch 8, a 32-token block, 4 KV heads x 2 query heads, head dim
64) against a cache stored positions-major `[batch, positions, kv_heads, head_dim]` (the earlier layout) or
heads-major `[batch, kv_heads, positions, head_dim]` (the cache's layout now), at the cache lengths of gen 256
and gen 1024 (prompt 64): both einsums and the softmax, best of 5, both layouts in one run, next to this machine's
roofline for the attention's FLOPs and cache bytes (read bandwidth and matmul FLOP/s measured in the same run).

  python benchmarks/attention_layout.py
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_speed import best_seconds, machine_roofline  # noqa: E402

BATCH, BLOCK, KV_HEADS, Q_PER_KV, HEAD_DIM, LAYERS = 8, 32, 4, 2, 64, 8
EINSUMS = {"positions-major": ("btkqd,bskd->bkqts", "bkqts,bskd->btkqd"),
           "heads-major": ("btkqd,bksd->bkqts", "bkqts,bksd->btkqd")}


def milliseconds(layout: str, positions: int) -> float:
  scores_eq, out_eq = EINSUMS[layout]
  shape = ((BATCH, positions, KV_HEADS, HEAD_DIM) if layout == "positions-major"
           else (BATCH, KV_HEADS, positions, HEAD_DIM))
  key = jax.random.key(0)
  q = jax.random.normal(key, (BATCH, BLOCK, KV_HEADS, Q_PER_KV, HEAD_DIM))
  caches = [jax.random.normal(jax.random.fold_in(key, i), shape) for i in range(2 * LAYERS)]

  @jax.jit
  def attention(q, caches):
    out = jnp.zeros_like(q)
    for layer in range(LAYERS):
      probs = jax.nn.softmax(jnp.einsum(scores_eq, q, caches[2 * layer]) / HEAD_DIM ** 0.5, axis=-1)
      out = out + jnp.einsum(out_eq, probs, caches[2 * layer + 1])
    return out

  return 1e3 * best_seconds(attention, q, caches, repeats=5)


def roofline_ms(positions: int, read: float, peak: float) -> float:
  """Lower bound of the attention: its two einsums' FLOPs at the matmul peak, or its keys/values at the read
  bandwidth."""
  flops = LAYERS * 2 * 2 * BATCH * KV_HEADS * Q_PER_KV * BLOCK * positions * HEAD_DIM
  cache_bytes = LAYERS * 2 * BATCH * KV_HEADS * positions * HEAD_DIM * 4
  return 1e3 * max(flops / peak, cache_bytes / read)


def main() -> int:
  read, peak = machine_roofline("float32", 3)
  for gen in (256, 1024):
    positions = 64 + gen + BLOCK  # keys: decode_speed.py's cache (prompt 64 + gen) and the block itself
    times = {layout: milliseconds(layout, positions) for layout in EINSUMS}
    roof = roofline_ms(positions, read, peak)
    print(f"{positions} keys: " + ", ".join(f"{k} {v:.1f} ms (x{v / roof:.1f} roofline)" for k, v in times.items())
          + f"; roofline {roof:.1f} ms (read {read / 1e9:.1f} GB/s, {peak / 1e9:.0f} GFLOP/s)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
