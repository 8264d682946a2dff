#!/usr/bin/env python
"""LLaDA2.0-mini (16B) decoding at real size, without weights: AOT-compile one SPD block step
(`dmax_jax.decoding.generate.block_step`: block forward against the static KV cache + the SPD rule) with
abstract bf16 parameters on CPU, single device and sharded on a simulated 8-device mesh, record
`memory_analysis()` per device, and print the hand-derived FLOPs / bytes per forward and the roofline
tokens/s of H200, TPU v5p and v6e (`dmax_jax.decoding.cost`).

  python benchmarks/decode_roofline.py [--context 4096] [--batch 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dmax_jax import ModelConfig, abstract_variables, sharding  # noqa: E402
from dmax_jax.decoding import DecodeOptions, cost  # noqa: E402
from dmax_jax.decoding.cache import CACHE_AXES  # noqa: E402
from dmax_jax.decoding.generate import block_step  # noqa: E402
from dmax_jax.model import LayerKV, variable_shardings  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "llada2_mini.json")
PAPER_TOK_S, PAPER_TPF = 1338.0, 5.47  # DMax on two H200


def block_step_args(cfg: ModelConfig, batch: int, block: int, context: int, mesh=None):
  """Abstract arguments of `block_step` (sharded by the logical rules when `mesh` is given)."""
  def sds(shape, dtype, spec=PartitionSpec()):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=None if mesh is None else NamedSharding(mesh, spec))
  variables = abstract_variables(cfg)
  if mesh is not None:
    shardings = variable_shardings(cfg, mesh)
    variables = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), variables, shardings)
    cache_spec = sharding.logical_to_sharding(PartitionSpec(*CACHE_AXES), mesh, cfg.parallelism).spec
    rows_axes = sharding.mesh_axes_of(cache_spec[1])
    if batch % math.prod(mesh.shape[a] for a in rows_axes):  # e.g. batch 1: rows replicated
      cache_spec = PartitionSpec(cache_spec[0], None, *cache_spec[2:])
  else:
    cache_spec = PartitionSpec()
  kv_shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, context, cfg.head_dim)
  cache = LayerKV(sds(kv_shape, jnp.dtype(cfg.dtype), cache_spec), sds(kv_shape, jnp.dtype(cfg.dtype), cache_spec))
  return (variables, cache, sds((batch, block), jnp.int32), sds((batch, block, cfg.hidden_size), jnp.float32),
          sds((batch, block), jnp.bool_), sds((batch,), jnp.int32), sds((batch,), jnp.int32))


def lower_block_step(cfg: ModelConfig, batch: int, block: int, context: int, mesh=None):
  """The SPD block step lowered for abstract arguments (sharded on `mesh` by `cfg.parallelism`'s rules)."""
  fn = jax.jit(functools.partial(block_step, cfg, DecodeOptions(mode="spd", block_length=block)))
  args = block_step_args(cfg, batch, block, context, mesh)
  if mesh is None:
    return fn.lower(*args)
  with sharding.use_mesh(mesh, cfg.parallelism):
    return fn.lower(*args)


def compile_block_step(cfg: ModelConfig, batch: int, block: int, context: int, mesh=None):
  """(compiled SPD block step, compile seconds)."""
  t = time.perf_counter()
  compiled = lower_block_step(cfg, batch, block, context, mesh).compile()
  return compiled, time.perf_counter() - t


def memory_gb(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  return {k: getattr(m, f"{k}_size_in_bytes") / 1e9 for k in ("argument", "output", "temp", "generated_code")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=CONFIG, help="Hugging Face config.json of the model (default: LLaDA2.0-mini)")
  p.add_argument("--batch", type=int, default=1, help="rows decoded together")
  p.add_argument("--block-length", type=int, default=32)
  p.add_argument("--context", type=int, default=4096, help="static cache length (prompt + generation)")
  p.add_argument("--meshes", default="expert=8;expert=4,tensor=2",
                 help="';'-separated meshes (axis=size,...) for the sharded AOT compiles; '' to skip")
  p.add_argument("--moe-impl", default="ragged", choices=("ragged", "tiled"),
                 help="MoE kernel: ragged (TPU/GPU grouped matmul; XLA:CPU expands it densely, inflating temp "
                      "memory) or tiled (expert-aligned tiles with gathered weights)")
  p.add_argument("--json", help="also write the results here")
  args = p.parse_args(argv)
  cfg = ModelConfig.from_json(args.config, param_dtype="bfloat16", dtype="bfloat16", moe_impl=args.moe_impl)
  report = {"config": os.path.basename(args.config), "moe_impl": args.moe_impl, "batch": args.batch, "block_length": args.block_length,
            "context": args.context, "compiles": []}

  compiled, secs = compile_block_step(cfg, args.batch, args.block_length, args.context)
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  entry = {"mesh": "single device", "compile_s": secs, "memory_gb_per_device": memory_gb(compiled),
           "xla_cost_flops": float(xla.get("flops", 0)), "xla_cost_bytes": float(xla.get("bytes accessed", 0))}
  report["compiles"].append(entry)
  print(f"single device: compiled in {secs:.1f} s; memory/device (GB) {entry['memory_gb_per_device']}")
  for spec in filter(None, args.meshes.split(";")):
    shape = sharding.parse_mesh(spec)
    compiled, secs = compile_block_step(cfg, args.batch, args.block_length, args.context, sharding.make_mesh(shape))
    report["compiles"].append({"mesh": spec, "compile_s": secs, "memory_gb_per_device": memory_gb(compiled)})
    print(f"mesh {spec}: compiled in {secs:.1f} s; memory/device (GB) {memory_gb(compiled)}")

  c = cost.forward_cost(cfg, args.batch, args.block_length, args.context)
  report["per_forward"] = {"tokens": c.tokens, "flops": c.flops, "weight_bytes": c.weight_bytes,
                           "cache_bytes": c.cache_bytes, "distinct_experts_per_layer": c.distinct_experts}
  print(f"per forward ({c.tokens} tokens, context {args.context}): {c.flops / 1e9:.1f} GFLOP, weights "
        f"{c.weight_bytes / 1e9:.2f} GB ({c.distinct_experts:.1f} of {cfg.num_experts} experts per layer), "
        f"KV cache {c.cache_bytes / 1e9:.3f} GB;  XLA cost_analysis: {entry['xla_cost_flops'] / 1e9:.1f} GFLOP, "
        f"{entry['xla_cost_bytes'] / 1e9:.2f} GB")
  report["roofline"] = []
  for chip in cost.CHIPS:
    row = {"chip": chip.name, "ms_per_forward": 1e3 * c.seconds(chip),
           "tok_s_at_tpf": args.batch * PAPER_TPF / c.seconds(chip),
           "tok_s_two_chips": cost.roofline_tokens_per_s(cfg, chip, PAPER_TPF, args.batch, args.block_length,
                                                         args.context, chips=2),
           "compute_bound_batch": cost.compute_bound_batch(cfg, chip, args.block_length, args.context),
           "ridge_flops_per_byte": cost.ridge_point(chip)}
    report["roofline"].append(row)
    print(f"{chip.name:8s} {row['ms_per_forward']:.2f} ms/forward -> {row['tok_s_at_tpf']:.0f} tok/s at TPF "
          f"{PAPER_TPF} (x2 chips: {row['tok_s_two_chips']:.0f}; paper on 2x H200: {PAPER_TOK_S:.0f}); "
          f"compute-bound from batch {row['compute_bound_batch']}")
  if args.json:
    from dmax_jax.io import write_text_atomic
    write_text_atomic(args.json, json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
