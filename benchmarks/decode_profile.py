#!/usr/bin/env python
"""Where one decoding forward's time goes: an XLA profile of the compiled SPD block step, by part of the model.

Traces `--forwards` calls of `dmax_jax.decoding.generate.block_step` (a block of 32 tokens per row against the
static KV cache, then the SPD rule; the models and layouts of `decode_speed.py`) with `jax.profiler`, maps every
executed HLO instruction to the JAX op that produced it (its `op_name`, which carries the model's module path
and the named scopes `router`, `dispatch`, `expert_matmuls`, `attend`, `decode_rule`) and sums the time per
part. Loops and conditionals are not counted themselves, only the instructions they run. XLA:CPU runs
independent instructions at once (e.g. an expert layer's gate and up matmuls, or a buffer fill beside a
matmul) and splits large ones over its thread pool; each moment is shared evenly among the instructions
running then, so the parts add up to the time any instruction ran (reported beside the untraced wall time).

  python benchmarks/decode_profile.py [--models mid] [--batches 1,8] [--gen-length 256] [--layouts before,after]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_speed import LAYOUTS, MODELS, PROMPT, best_seconds, layout_steps, step_args  # noqa: E402
from dmax_jax import ModelConfig  # noqa: E402

# First match wins; matched against the instruction's op_name.
PARTS = (
    ("LM head", r"Transformer\.logits"),
    ("expert matmuls (routed)", r"/expert_matmuls/"),
    ("expert dispatch and combine", r"/dispatch/"),
    ("router", r"/router/"),
    ("shared expert", r"/mlp/shared/"),
    ("dense MLP (first layer)", r"dense_layers/[^/]+/mlp/"),
    ("attention: scores, softmax, values", r"/attend/"),
    ("attention: projections, QK norm, RoPE", r"attention"),
    ("decoding rule (softmax, argmax, SPD update)", r"decode_rule"),
    ("norms, residuals, embedding", r"norm|/add|embed"),
)
CONTAINERS = ("while", "conditional", "call")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")


def instruction_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (opcode, op_name) over all computations of a compiled module. A fusion without
  an op_name of its own takes the first one inside the computation it calls."""
  ops, calls, first_op_name, computation = {}, {}, {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
    if header and line.rstrip().endswith("{"):
      computation = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    op_name = re.search(r'op_name="([^"]*)"', line)
    op_name = op_name.group(1) if op_name else ""
    ops[m.group(1)] = (m.group(2), op_name)
    callee = re.search(r"calls=%([\w.\-]+)", line)
    if callee:
      calls[m.group(1)] = callee.group(1)
    if op_name and computation is not None:
      first_op_name.setdefault(computation, op_name)
  return {name: (opcode, op_name or first_op_name.get(calls.get(name), ""))
          for name, (opcode, op_name) in ops.items()}


def part_of(op_name: str) -> str:
  return next((part for part, pattern in PARTS if re.search(pattern, op_name)), "other")


def profile(step, args, forwards: int) -> tuple[float, dict[str, float]]:
  """(wall seconds per forward, seconds per forward by part)."""
  ops = instruction_ops(step.lower(*args).compile().as_text())
  wall = best_seconds(step, *args, repeats=3)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(forwards):
        jax.block_until_ready(step(*args))
    (trace_file,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(trace_file) as f:
      events = json.load(f)["traceEvents"]
  spans = []
  for event in events:
    op = ops.get(event.get("name", "")) if event.get("ph") == "X" else None
    if op is not None and op[0] not in CONTAINERS:
      spans.append((event["ts"], event["ts"] + event["dur"], part_of(op[1])))
  return wall, {part: secs * 1e-6 / forwards for part, secs in shared_time(spans).items()}


def shared_time(spans: list[tuple[float, float, str]]) -> dict[str, float]:
  """Time per label, each moment split evenly among the spans running then: instructions that run at once
  (independent ones, or one split over the thread pool's workers) share the wall time instead of each
  counting it whole, so the parts add up to the time anything ran."""
  edges = sorted({t for start, end, _ in spans for t in (start, end)})
  index = {t: i for i, t in enumerate(edges)}
  running = [collections.Counter() for _ in edges]
  for start, end, label in spans:
    for i in range(index[start], index[end]):
      running[i][label] += 1
  shares = collections.Counter()
  for i, counts in enumerate(running[:-1]):
    n = sum(counts.values())
    for label, k in counts.items():
      shares[label] += (edges[i + 1] - edges[i]) * k / n
  return dict(shares)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mid", help=f"comma list of {sorted(MODELS)}")
  p.add_argument("--batches", default="1,8", help="rows per forward")
  p.add_argument("--gen-length", type=int, default=256, help="cache length = prompt 64 + this")
  p.add_argument("--layouts", default="before,after", help=f"comma list of {sorted(LAYOUTS)} (see decode_speed.py)")
  p.add_argument("--forwards", type=int, default=5, help="forwards traced (the times are their mean)")
  args = p.parse_args(argv)
  for name in args.models.split(","):
    base = ModelConfig(**MODELS[name], param_dtype="float32", dtype="float32")
    for layout, cfg, variables, step in layout_steps(base, args.layouts.split(",")):
      for batch in map(int, args.batches.split(",")):
        wall, shares = profile(step, step_args(cfg, variables, batch, PROMPT + args.gen_length), args.forwards)
        total = sum(shares.values())
        print(f"\n{name}, layout {layout}, batch {batch}, gen {args.gen_length}: {wall * 1e3:.1f} ms per forward "
              f"(best of 3), {total * 1e3:.1f} ms with an instruction running (traced)")
        for part, secs in sorted(shares.items(), key=lambda kv: -kv[1]):
          print(f"  {part:45s} {secs * 1e3:7.1f} ms  {100 * secs / total:5.1f} %", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
