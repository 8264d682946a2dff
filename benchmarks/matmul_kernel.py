#!/usr/bin/env python
"""The CPU matmul kernel (`dmax_jax/layers/cpu_kernels.cc`, `matmul_impl="native"`) against XLA's dot on the
mid-size model's decode matmuls, and both against this machine's matmul FLOP/s (2048^3 float32) measured in the
same run. Weights are cold as in a decode (each forward streams ~0.3-0.9 GB): every product cycles over copies
of its weight matrix totalling >= --cold-mb, more than the L3 cache holds.

  python benchmarks/matmul_kernel.py [--rows 32,256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_speed import machine_roofline  # noqa: E402
from dmax_jax.layers import linear  # noqa: E402

# (name, K, N) of the mid-size model (hidden 512, 8 heads x 64, 4 kv heads, dense width 1536, expert width 256)
SHAPES = (("LM head", 512, 32768), ("query / out", 512, 512), ("key / value", 512, 256), ("dense gate / up", 512, 1536),
          ("dense down", 1536, 512), ("shared gate / up", 512, 256), ("shared down", 256, 512), ("router", 512, 64))


def seconds_per_product(impl: str, rows: int, k: int, n: int, cold_bytes: int, repeats: int) -> float:
  rng = np.random.default_rng(0)
  copies = max(1, math.ceil(cold_bytes / (4 * k * n)))
  weights = [jnp.asarray(rng.standard_normal((k, n)), jnp.float32) for _ in range(copies)]
  x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
  run = jax.jit(lambda x, ws: sum(jnp.sum(linear.project(x, w, impl=impl)) for w in ws))
  jax.block_until_ready(run(x, weights))
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(x, weights))
    best = min(best, time.perf_counter() - start)
  return best / copies


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default="32,256", help="comma list of rows (batch x block: 32 = batch 1, 256 = batch 8)")
  p.add_argument("--cold-mb", type=int, default=128, help="weight copies per product, in MB (default 128)")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  _, peak = machine_roofline("float32", args.repeats)
  print(f"machine: {peak / 1e9:.0f} GFLOP/s (2048^3 float32 matmul)")
  print(f"{'rows':>4} {'matmul':18} {'K x N':>12} {'xla ms':>8} {'GFLOP/s':>8} {'native ms':>9} {'GFLOP/s':>8} "
        f"{'native/peak':>11} {'speed-up':>8}")
  for rows in map(int, args.rows.split(",")):
    for name, k, n in SHAPES:
      flops = 2 * rows * k * n
      xla, native = (seconds_per_product(impl, rows, k, n, args.cold_mb << 20, args.repeats)
                     for impl in ("xla", "native"))
      print(f"{rows:4d} {name:18} {f'{k} x {n}':>12} {xla * 1e3:8.3f} {flops / xla / 1e9:8.1f} {native * 1e3:9.3f} "
            f"{flops / native / 1e9:8.1f} {flops / native / peak:11.2f} {xla / native:7.2f}x", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
