#!/usr/bin/env python
"""The decode forward's dominant cost on a CPU, isolated: the bucketed MoE kernel's batched expert matmuls
(`[E, C, H] x [E, H, F]`, gate/up then down, `dmax_jax.layers.moe_ops`) over the mid model's 8 layers of expert
weights (64 experts, hidden 512, width 256: 805 MB float32), against this machine's read bandwidth and matmul
FLOP/s measured in the same process. C = 8 rows per expert is a batch-1 decode forward (32 tokens x top-8 over
64 experts, with headroom), C = 48 batch 8.

Besides the kernel's own formulation (`bucketed`), the same products written other ways, to see whether any
streams the weights faster through XLA:CPU's dot kernels:
  out_major:  weights stored `[E, F, H]` (the contraction on their minor axis);
  weights_lhs: weights `[E, F, H]` as the left operand and the rows as columns (`[E, F, C]` outputs);
  mul_reduce: a broadcast multiply and a sum over H (no dot);
  gate_up:    gate and up concatenated into one `[E, H, 2F]` matmul.
And, outside XLA, a hand-written C++ reference of the same products (`native/expert_matmul_ref.cc`, built here
with `$CXX`, default g++, `-O3 -march=native -fopenmp`; one thread per core), to show what this machine does for
the same bytes and FLOPs:
  native_in_major: the project's weight layout `[E, H, F]`;
  native_packed:   weights in 64-column panels `[E, F/64, H, 64]` (contiguous per panel).
Each XLA:CPU library setting runs in its own process (XLA flags are read once per process):

  python benchmarks/expert_matmul.py [--settings default,eigen,xnn,onednn,one_core] [--rows 1,2,4,8,16,48]
      [--forms bucketed,out_major,weights_lhs,mul_reduce,gate_up,native_in_major,native_packed]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile

SETTINGS = {"default": ({}, []),
            "eigen": ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}, []),
            "xnn": ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type= "
                                  "--xla_cpu_experimental_xnn_fusion_type=dot"}, []),
            "onednn": ({"XLA_FLAGS": "--xla_cpu_experimental_onednn_fusion_type=dot"}, []),
            "one_core": ({}, ["taskset", "-c", "0"])}
EXPERTS, HIDDEN, WIDTH, LAYERS = 64, 512, 256, 8


def _forms():
  import jax
  import jax.numpy as jnp

  def bucketed(x_ExCxH, layers):
    for gate_ExHxF, up_ExHxF, down_ExFxH in layers:
      act = jax.nn.silu(jnp.einsum("ech,ehf->ecf", x_ExCxH, gate_ExHxF)) * jnp.einsum("ech,ehf->ecf", x_ExCxH, up_ExHxF)
      x_ExCxH = x_ExCxH + 1e-3 * jnp.einsum("ecf,efh->ech", act, down_ExFxH)
    return x_ExCxH

  def out_major(x_ExCxH, layers):
    for gate_ExFxH, up_ExFxH, down_ExHxF in layers:
      act = jax.nn.silu(jnp.einsum("ech,efh->ecf", x_ExCxH, gate_ExFxH)) * jnp.einsum("ech,efh->ecf", x_ExCxH, up_ExFxH)
      x_ExCxH = x_ExCxH + 1e-3 * jnp.einsum("ecf,ehf->ech", act, down_ExHxF)
    return x_ExCxH

  def weights_lhs(x_ExCxH, layers):
    x_ExHxC = jnp.swapaxes(x_ExCxH, 1, 2)
    for gate_ExFxH, up_ExFxH, down_ExHxF in layers:
      act = jax.nn.silu(jnp.einsum("ehc,efh->efc", x_ExHxC, gate_ExFxH)) * jnp.einsum("ehc,efh->efc", x_ExHxC, up_ExFxH)
      x_ExHxC = x_ExHxC + 1e-3 * jnp.einsum("efc,ehf->ehc", act, down_ExHxF)
    return jnp.swapaxes(x_ExHxC, 1, 2)

  def mul_reduce(x_ExCxH, layers):
    for gate_ExHxF, up_ExHxF, down_ExFxH in layers:
      gate = (x_ExCxH[..., None] * gate_ExHxF[:, None]).sum(2)
      up = (x_ExCxH[..., None] * up_ExHxF[:, None]).sum(2)
      x_ExCxH = x_ExCxH + 1e-3 * ((jax.nn.silu(gate) * up)[..., None] * down_ExFxH[:, None]).sum(2)
    return x_ExCxH

  def gate_up(x_ExCxH, layers):
    for gate_up_ExHx2F, down_ExFxH in layers:
      both = jnp.einsum("ech,ehf->ecf", x_ExCxH, gate_up_ExHx2F)
      act = jax.nn.silu(both[..., :WIDTH]) * both[..., WIDTH:]
      x_ExCxH = x_ExCxH + 1e-3 * jnp.einsum("ecf,efh->ech", act, down_ExFxH)
    return x_ExCxH

  out_major_layout = lambda gate, up, down: (jnp.swapaxes(gate, 1, 2), jnp.swapaxes(up, 1, 2), jnp.swapaxes(down, 1, 2))
  return {"bucketed": (bucketed, lambda *w: w), "out_major": (out_major, out_major_layout),
          "weights_lhs": (weights_lhs, out_major_layout), "mul_reduce": (mul_reduce, lambda *w: w),
          "gate_up": (gate_up, lambda gate, up, down: (jnp.concatenate([gate, up], -1), down))}


@functools.cache
def _native_binary() -> str:
  source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "expert_matmul_ref.cc")
  build_dir = tempfile.mkdtemp(prefix="expert_matmul_ref")
  atexit.register(shutil.rmtree, build_dir, ignore_errors=True)
  binary = os.path.join(build_dir, "expert_matmul_ref")
  subprocess.run([os.environ.get("CXX", "g++"), "-O3", "-march=native", "-fopenmp", "-std=c++17", source, "-o",
                  binary], check=True)
  return binary


def _measure_native(layout: str, rows_per_expert: int) -> float:
  """Seconds of the C++ reference over the same products: every layer's gate and up (`[H, F]`), then its
  down (`[F, H]`), each best of 5."""
  def run(k: int, n: int, matrices: int) -> float:
    out = subprocess.run([_native_binary(), layout, str(EXPERTS), str(k), str(n), str(matrices), str(rows_per_expert),
                          "5"], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    return float(out.stdout)
  return run(HIDDEN, WIDTH, 2 * LAYERS) + run(WIDTH, HIDDEN, LAYERS)


def measure(form: str, rows_per_expert: int) -> tuple[float, int]:
  """(seconds, bytes of weights) of the expert matmuls of all layers, best of 5."""
  nbytes = LAYERS * 3 * EXPERTS * HIDDEN * WIDTH * 4
  if form.startswith("native_"):
    return _measure_native(form.removeprefix("native_"), rows_per_expert), nbytes
  import jax
  fn, layout = _forms()[form]
  key = jax.random.key(0)
  shapes = ((EXPERTS, HIDDEN, WIDTH), (EXPERTS, HIDDEN, WIDTH), (EXPERTS, WIDTH, HIDDEN))
  layers = [jax.block_until_ready(layout(*(jax.random.normal(jax.random.fold_in(key, 3 * layer + i), s)
                                           for i, s in enumerate(shapes))))
            for layer in range(LAYERS)]
  from decode_speed import best_seconds
  x = jax.random.normal(key, (EXPERTS, rows_per_expert, HIDDEN))
  return best_seconds(jax.jit(fn), x, layers, repeats=5), nbytes


def child(setting: str, forms: list[str], rows: list[int]) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from decode_speed import machine_roofline
  read, peak = machine_roofline("float32", 3)
  print(f"{setting}: machine reads {read / 1e9:.1f} GB/s, multiplies at {peak / 1e9:.0f} GFLOP/s", flush=True)
  for form in forms:
    for c in rows:
      secs, nbytes = measure(form, c)
      flops = LAYERS * 3 * 2 * EXPERTS * c * HIDDEN * WIDTH
      floor = max(nbytes / read, flops / peak)
      print(f"  {form:11s} C={c:2d}: {secs * 1e3:6.1f} ms, weights streamed at {nbytes / secs / 1e9:5.1f} GB/s, "
            f"{flops / secs / 1e9:5.0f} GFLOP/s; x{secs / floor:.2f} the roofline", flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--settings", default="default,eigen,xnn,onednn,one_core", help=f"comma list of {sorted(SETTINGS)}")
  p.add_argument("--forms", default="bucketed", help="comma list of bucketed, out_major, weights_lhs, mul_reduce, "
                                                      "gate_up, native_in_major, native_packed")
  p.add_argument("--rows", default="8,48", help="rows per expert (C), comma list")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  forms, rows = args.forms.split(","), [int(c) for c in args.rows.split(",")]
  if args.child:
    child(args.child, forms, rows)
    return 0
  for setting in args.settings.split(","):
    env, prefix = SETTINGS[setting]
    subprocess.run(prefix + [sys.executable, os.path.abspath(__file__), "--child", setting, "--forms", args.forms,
                             "--rows", args.rows], env={**os.environ, **env}, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
