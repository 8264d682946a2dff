#!/usr/bin/env python
"""The decode forward's dominant cost on a CPU, isolated: the bucketed MoE kernel's batched expert matmuls
(`[E, C, H] x [E, H, F]`, gate/up then down, `dmax_jax.layers.moe_ops`) over the mid model's 8 layers of expert
weights (64 experts, hidden 512, width 256: 805 MB float32), against this machine's read bandwidth and matmul
FLOP/s measured in the same process. C = 8 rows per expert is a batch-1 decode forward (32 tokens x top-8 over
64 experts, with headroom), C = 48 batch 8. Each XLA:CPU library setting runs in its own process (XLA flags are
read once per process):

  python benchmarks/expert_matmul.py [--settings default,xnn,ynn,one_core]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SETTINGS = {"default": ({}, []), "xnn": ({"XLA_FLAGS": "--xla_cpu_experimental_xnn_fusion_type=dot"}, []),
            "ynn": ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}, []),
            "one_core": ({}, ["taskset", "-c", "0"])}
EXPERTS, HIDDEN, WIDTH, LAYERS = 64, 512, 256, 8


def measure(rows_per_expert: int) -> tuple[float, float]:
  """(seconds, bytes of weights) of the expert matmuls of all layers, best of 5."""
  import jax
  import jax.numpy as jnp
  key = jax.random.key(0)
  shapes = ((EXPERTS, HIDDEN, WIDTH), (EXPERTS, HIDDEN, WIDTH), (EXPERTS, WIDTH, HIDDEN))
  layers = [tuple(jax.random.normal(jax.random.fold_in(key, 3 * layer + i), s) for i, s in enumerate(shapes))
            for layer in range(LAYERS)]

  @jax.jit
  def experts(x_ExCxH, layers):
    for gate, up, down in layers:
      act = jax.nn.silu(jnp.einsum("ech,ehf->ecf", x_ExCxH, gate)) * jnp.einsum("ech,ehf->ecf", x_ExCxH, up)
      x_ExCxH = x_ExCxH + 1e-3 * jnp.einsum("ecf,efh->ech", act, down)
    return x_ExCxH

  from decode_speed import best_seconds
  x = jax.random.normal(key, (EXPERTS, rows_per_expert, HIDDEN))
  return best_seconds(experts, x, layers, repeats=5), LAYERS * 3 * EXPERTS * HIDDEN * WIDTH * 4


def child(setting: str) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from decode_speed import machine_roofline
  read, peak = machine_roofline("float32", 3)
  for rows in (8, 48):
    secs, nbytes = measure(rows)
    flops = LAYERS * 3 * 2 * EXPERTS * rows * HIDDEN * WIDTH
    floor = max(nbytes / read, flops / peak)
    print(f"{setting:9s} C={rows:2d}: {secs * 1e3:6.1f} ms, weights streamed at {nbytes / secs / 1e9:5.1f} GB/s "
          f"(machine reads {read / 1e9:.1f}), {flops / secs / 1e9:5.0f} GFLOP/s (peak {peak / 1e9:.0f}); "
          f"x{secs / floor:.2f} the roofline", flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--settings", default="default,xnn,ynn,one_core", help=f"comma list of {sorted(SETTINGS)}")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    child(args.child)
    return 0
  for setting in args.settings.split(","):
    env, prefix = SETTINGS[setting]
    subprocess.run(prefix + [sys.executable, os.path.abspath(__file__), "--child", setting],
                   env={**os.environ, **env}, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
