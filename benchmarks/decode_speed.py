#!/usr/bin/env python
"""Milliseconds per decoding forward against this machine's roofline, before and after the decode layout.

One SPD block step (`dmax_jax.decoding.generate.block_step`: a block of 32 tokens per row against the static
KV cache, then the SPD rule) of random LLaDA2-MoE models, timed compiled (best of --repeats), at batch 1
and 8 and at the cache lengths of gen 256 and gen 1024 (prompt 64): the decode's last block (the cache filled)
and the mean over --positions blocks spread over the decode (attention reads the cache only as far as it is
filled: XLA's attention to the next of `dmax_jax.layers.attention.prefix_sizes`, the CPU kernel to the last key
seen). Layouts, any of them in one run:
  before: layers scanned over stacked weights, `tiled` MoE kernel (the earlier default);
  looped: layers unrolled over per-layer weights and cache (`scan_layers=False`, what decode.py loads),
          XLA's own decode MoE kernel (`looped`), XLA's dots;
  native_experts: the same with the CPU expert kernel (`native`, `dmax_jax/layers/cpu_kernels.cc`), XLA's dots
          and attention;
  native_matmuls: the same with the CPU matmul kernel for the other weight matmuls (`dmax_jax/layers/linear.py`),
          XLA's attention;
  after:  the same with `auto` kernels (on CPU at these shapes: the expert and matmul kernels, and the attention
          kernel for the cache, `dmax_jax/layers/attention.py`).
With --whole-decode, also whole SPD decodes of random prompts (`decode_padded`), per batch forward: the block
step's random inputs route evenly over the experts, a real decode routes a block's tokens to a few of them; the
experts it touches are counted (a separate run with a host callback in each MoE layer) and its roofline for
the bytes it touches is reported beside the uniform-routing one.
The roofline is measured in the same run: read bandwidth (a reduction over a 2 GiB array, larger than any
cache) and matmul FLOP/s (2048^3 float32); a forward must read its weights (every non-expert matrix and the
distinct experts its tokens pick, `dmax_jax.decoding.cost`) and the cache, and do its FLOPs.

  python benchmarks/decode_speed.py [--models mid,mini_like,experts256] [--json out.json]
  python benchmarks/decode_speed.py --layouts after --gen-lengths 256 --whole-decode   # + real decodes
  python benchmarks/decode_speed.py --config configs/llada2_mini.json --dtype bfloat16 --layouts after  # 16B, GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dmax_jax import ModelConfig, init_variables  # noqa: E402
from dmax_jax.decoding import DecodeOptions, cost  # noqa: E402
from dmax_jax.decoding.cache import init_cache  # noqa: E402
from dmax_jax.decoding.generate import block_step  # noqa: E402
from dmax_jax.model import unstack_layers  # noqa: E402

_COMMON = dict(num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_shared_experts=1,
               first_k_dense_replace=1, routed_scaling_factor=2.5, partial_rotary_factor=0.5, rope_theta=600000.0,
               vocab_size=32768, eos_token_id=32766, mask_token_id=32767, pad_token_id=32765)
MODELS = {
    # the mid-size model: hidden 512, 8 layers, 64 experts top-8 in 8 groups, vocab 32k (0.89 GB float32)
    "mid": dict(_COMMON, hidden_size=512, num_hidden_layers=8, intermediate_size=1536, moe_intermediate_size=256,
                num_experts=64, num_experts_per_tok=8, n_group=8, topk_group=4),
    # LLaDA2.0-mini's head layout and expert width: hidden 1024, 4 layers, 64 experts top-8, moe width 512
    "mini_like": dict(_COMMON, hidden_size=1024, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=4, head_dim=128, intermediate_size=5120, moe_intermediate_size=512,
                      num_experts=64, num_experts_per_tok=8, n_group=8, topk_group=4),
    # the mid model with LLaDA2.0-mini's expert count: 256 experts top-8
    "experts256": dict(_COMMON, hidden_size=512, num_hidden_layers=8, intermediate_size=1536,
                       moe_intermediate_size=256, num_experts=256, num_experts_per_tok=8, n_group=8, topk_group=4),
}
LAYOUTS = {"before": dict(scan_layers=True, moe_impl="tiled", matmul_impl="xla"),
           "looped": dict(scan_layers=False, moe_impl="looped", matmul_impl="xla"),
           "native_experts": dict(scan_layers=False, moe_impl="native", matmul_impl="xla", attention_impl="xla"),
           "native_matmuls": dict(scan_layers=False, moe_impl="native", matmul_impl="auto", attention_impl="xla"),
           "after": dict(scan_layers=False, moe_impl="auto", matmul_impl="auto", attention_impl="auto")}
BLOCK, PROMPT = 32, 64


def best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def machine_roofline(dtype: str, repeats: int) -> tuple[float, float]:
  """(read bytes/s, matmul FLOP/s in `dtype`) of this machine, measured."""
  big = jnp.ones((2 * 2**30 // 4,), jnp.float32)
  read = big.nbytes / best_seconds(jax.jit(jnp.sum), big, repeats=repeats)
  del big
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jnp.ones((n, n), dtype)
  flops = 2 * n**3 / best_seconds(jax.jit(lambda m: m @ m), a, repeats=repeats)
  return read, flops


def layout_steps(base: ModelConfig, layouts: list[str]):
  """Per layout of LAYOUTS: `(layout, config, variables, jitted SPD block step)` of random weights."""
  stacked = nn.unbox(init_variables(base, jax.random.key(0)))
  for layout in layouts:
    cfg = base.replace(**LAYOUTS[layout])
    variables = stacked if cfg.scan_layers else unstack_layers(cfg, stacked)
    yield layout, cfg, variables, jax.jit(functools.partial(block_step, cfg, DecodeOptions(mode="spd",
                                                                                           block_length=BLOCK)))


def step_args(cfg: ModelConfig, variables, batch: int, context: int, start: int | None = None):
  """Arguments of one block step of every row at `start` (default: the last block before the window's end)."""
  start = context - 2 * BLOCK if start is None else start
  rng = np.random.default_rng(0)
  cache = jax.tree.map(lambda z: jnp.asarray(rng.standard_normal(z.shape), z.dtype), init_cache(cfg, batch, context))
  return (variables, cache, jnp.asarray(rng.integers(0, 1000, (batch, BLOCK)), jnp.int32),
          jnp.asarray(rng.standard_normal((batch, BLOCK, cfg.hidden_size)), jnp.float32),
          jnp.ones((batch, BLOCK), bool), jnp.full((batch,), start, jnp.int32),
          jnp.zeros((batch,), jnp.int32))


def whole_decode(cfg: ModelConfig, variables, batch: int, gen: int):
  """A call running a whole SPD decode (`decode_padded`, threshold 0.5) of `batch` random prompts of PROMPT
  tokens: its routing is a real decode's (a block's tokens pick the same few experts), not the even routing of
  the block step's random inputs."""
  from dmax_jax.decoding import pad_prompts
  from dmax_jax.decoding.generate import decode_padded
  prompts = np.random.default_rng(0).integers(0, min(cfg.eos_token_id, cfg.mask_token_id), (batch, PROMPT))
  ids, lens = pad_prompts(prompts.tolist(), PROMPT)
  options = DecodeOptions(mode="spd", block_length=BLOCK, gen_length=gen, threshold=0.5)
  return lambda: jax.block_until_ready(decode_padded(cfg, variables, ids, lens, options))


def whole_decode_seconds_per_forward(cfg: ModelConfig, variables, batch: int, gen: int, repeats: int) -> float:
  """Seconds per batch forward of `whole_decode`, the prefill counted."""
  decode = whole_decode(cfg, variables, batch, gen)
  forwards = int(decode().batch_forwards) + 1
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    decode()
    times.append(time.perf_counter() - start)
  return min(times) / forwards


def touched_experts_per_layer(cfg: ModelConfig, variables, batch: int, gen: int) -> float:
  """Mean distinct routed experts per MoE layer and forward of `whole_decode`, counted from the router's choices
  by a host callback in every MoE layer (a separate, untimed run): what a real decode must read, where the
  roofline assumes uniform routing."""
  from dmax_jax.layers import moe_ops
  counts, dispatch = [], moe_ops.dispatch_experts

  def counting(x_TxH, expert_ids_TxA, *args, **kwargs):
    jax.debug.callback(lambda ids: counts.append(len(np.unique(ids))), expert_ids_TxA)
    return dispatch(x_TxH, expert_ids_TxA, *args, **kwargs)

  moe_ops.dispatch_experts = counting
  jax.clear_caches()  # trace the decoder again, with the callback
  try:
    whole_decode(cfg, variables, batch, gen)()
    jax.effects_barrier()
  finally:
    moe_ops.dispatch_experts = dispatch
    jax.clear_caches()
  return float(np.mean(counts))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mid", help=f"comma list of {sorted(MODELS)}")
  p.add_argument("--config", help="a Hugging Face config.json to benchmark instead of --models (random weights)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights, cache and matmuls")
  p.add_argument("--batches", default="1,8", help="rows per forward")
  p.add_argument("--gen-lengths", default="256,1024", help="cache length = prompt 64 + this")
  p.add_argument("--layouts", default="before,looped,after", help=f"comma list of {sorted(LAYOUTS)}")
  p.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
  p.add_argument("--positions", type=int, default=5,
                 help="blocks, evenly spaced over the generation, whose mean is a whole decode's ms per forward "
                      "(attention reads the cache only as far as it is filled); 1 = the last block only")
  p.add_argument("--whole-decode", action="store_true",
                 help="also time whole SPD decodes of random prompts (real routing; minutes per row on a CPU)")
  p.add_argument("--json", help="also write the results here")
  args = p.parse_args(argv)
  read, peak = machine_roofline(args.dtype, args.repeats)
  machine = cost.Chip("this machine", read, peak)
  print(f"machine: read {read / 1e9:.1f} GB/s, matmul {peak / 1e9:.0f} GFLOP/s ({args.dtype}, {jax.devices()[0]})")
  report = {"read_bytes_per_s": read, "matmul_flops_per_s": peak, "rows": []}
  dtypes = dict(param_dtype=args.dtype, dtype=args.dtype)
  models = {os.path.basename(args.config): ModelConfig.from_json(args.config, **dtypes)} if args.config else {
      name: ModelConfig(**MODELS[name], **dtypes) for name in args.models.split(",")}
  bytes_per_value = 2 if args.dtype == "bfloat16" else 4
  for name, base in models.items():
    for layout, cfg, variables, step in layout_steps(base, args.layouts.split(",")):
      for batch in map(int, args.batches.split(",")):
        for gen in map(int, args.gen_lengths.split(",")):
          context = PROMPT + gen
          secs = best_seconds(step, *step_args(cfg, variables, batch, context), repeats=args.repeats)
          starts = np.linspace(PROMPT, context - 2 * BLOCK, args.positions).astype(int) // BLOCK * BLOCK
          mean_secs = np.mean([secs if start == context - 2 * BLOCK else
                               best_seconds(step, *step_args(cfg, variables, batch, context, start),
                                            repeats=args.repeats) for start in starts])
          roofline = lambda keys, experts=None: cost.forward_cost(cfg, batch, BLOCK, keys, bytes_per_value,
                                                                  bytes_per_value, experts).seconds(machine)
          c = cost.forward_cost(cfg, batch, BLOCK, context, bytes_per_value, bytes_per_value)
          roof = roofline(context)
          mean_roof = np.mean([roofline(start) for start in starts])  # a block at `start` must read `start` keys
          row = {"model": name, "layout": layout, "batch": batch, "gen_length": gen, "ms_per_forward": 1e3 * secs,
                 "ms_per_forward_mean_over_decode": 1e3 * mean_secs, "mean_roofline_ms": 1e3 * mean_roof,
                 "x_roofline_mean_over_decode": mean_secs / mean_roof,
                 "tokens_per_s_at_tpf1": batch / secs, "weight_gb": c.weight_bytes / 1e9,
                 "cache_gb": c.cache_bytes / 1e9, "gflop": c.flops / 1e9, "roofline_ms": 1e3 * roof,
                 "x_roofline": secs / roof}
          if args.whole_decode:
            whole = whole_decode_seconds_per_forward(cfg, variables, batch, gen, args.repeats)
            touched = touched_experts_per_layer(cfg, variables, batch, gen)
            touched_roof = np.mean([roofline(start, touched) for start in starts])
            row.update(whole_decode_ms_per_forward=1e3 * whole, x_roofline_whole_decode=whole / mean_roof,
                       touched_experts_per_layer=touched, touched_roofline_ms=1e3 * touched_roof,
                       x_touched_roofline_whole_decode=whole / touched_roof)
          report["rows"].append(row)
          print(f"{name:10s} {layout:6s} batch {batch} gen {gen:4d}: {row['ms_per_forward']:7.1f} ms/forward "
                f"(last block; mean over the decode {1e3 * mean_secs:.1f}, x{mean_secs / mean_roof:.2f} its roofline)  "
                f"(weights {row['weight_gb']:.2f} GB + cache {row['cache_gb']:.3f} GB, {row['gflop']:.1f} GFLOP; "
                f"roofline {row['roofline_ms']:.1f} ms, x{row['x_roofline']:.2f})", flush=True)
          if args.whole_decode:
            print(f"{'':17s} whole decode: {row['whole_decode_ms_per_forward']:7.1f} ms/forward "
                  f"(x{row['x_roofline_whole_decode']:.2f} the mean roofline; {touched:.1f} of {cfg.num_experts} "
                  f"experts touched per layer, roofline of what it touches {1e3 * touched_roof:.1f} ms, "
                  f"x{row['x_touched_roofline_whole_decode']:.2f})", flush=True)
  if args.json:
    from dmax_jax.io import write_text_atomic
    write_text_atomic(args.json, json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
