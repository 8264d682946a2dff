#!/usr/bin/env python
"""Collectives, per-device matmul FLOPs and memory of the 16B OPUT train step and the 16B SPD block step
on simulated 32-device meshes, expert-parallel (default) against the GSPMD baseline, in one run.

  python benchmarks/comm_16b.py                       # four 32-device meshes, both schemes
  python benchmarks/comm_16b.py --meshes fsdp=8,expert=4 --json out.json

Everything is abstract (`ShapeDtypeStruct`s); nothing is allocated. Bytes are read from the module right
after SPMD partitioning (XLA:CPU later widens bf16 collectives to f32; a TPU moves the partitioned
dtypes), loop bodies weighted by their trip counts ("per step") and, for comparison with XLA's own
convention, each instruction once ("as written"). Wire bytes: what one device sends (ring algorithms).
The analytic minimum of the expert-parallel scheme is `dmax_jax.comm_model.oput_step` (formulas in
docs/tpu_pod.md). Per-device memory is compiled with a stand-in for the grouped matmul that has the
TPU kernel's shapes (XLA:CPU expands `ragged_dot` densely over the local experts); expert-matmul FLOPs per
device are the routed rows (what a grouped-matmul kernel visits), the rest is counted from the dots of
the partitioned program.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=32")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from decode_roofline import lower_block_step  # noqa: E402
from dmax_jax import ModelConfig, comm_model, flops, hlo, sharding  # noqa: E402
from dmax_jax.io import write_text_atomic  # noqa: E402
from dmax_jax.layers import moe_ops  # noqa: E402
from dmax_jax.training.optimizer import make_optimizer  # noqa: E402
from dmax_jax.training.run_config import load_run_config  # noqa: E402
from dmax_jax.training.step import BATCH_KEYS, abstract_state, make_train_step, train_step_fn  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCHEMES = ("gspmd", "expert_parallel")


@contextlib.contextmanager
def grouped_matmul_standin():
  """Replaces the ragged grouped matmul by plain dots of the same shapes: compile-only, wrong values, the
  memory footprint of a TPU/GPU grouped-matmul kernel instead of XLA:CPU's dense expansion."""
  real = moe_ops._ragged_experts

  def standin(rows_MxD, group_sizes_E, w, dtype):
    gate = rows_MxD @ w.gate[0].astype(dtype)
    up = rows_MxD @ w.up[0].astype(dtype)
    return moe_ops._swiglu(gate, up) @ w.down[0].astype(dtype)

  moe_ops._ragged_experts = standin
  try:
    yield
  finally:
    moe_ops._ragged_experts = real


def oput_setup(seq_len: int | None, batch: int | None):
  overrides = [f"model.config={os.path.join(ROOT, 'configs', 'llada2_mini.json')}", "model.path=null"]
  if seq_len:
    overrides.append(f"data.max_seq_len={seq_len}")
  if batch:
    overrides += [f"train.global_batch_size={batch}", f"train.micro_batch_size={batch}"]
  return load_run_config(os.path.join(ROOT, "configs", "llada2_mini_oput.yaml"), overrides)


def model_config(run_cfg, parallelism: str) -> ModelConfig:
  m = run_cfg.model
  return ModelConfig.from_json(m.config, param_dtype=m.param_dtype, dtype=m.dtype, remat_policy=m.remat_policy,
                               moe_impl="ragged", parallelism=parallelism)


def oput_batch(run_cfg):
  t, seq = run_cfg.train, run_cfg.data.max_seq_len
  return {k: jax.ShapeDtypeStruct((t.accumulation_steps, t.micro_batch) + (() if k == "flags" else (seq,)),
                                  jnp.bool_ if k == "flags" else jnp.int32) for k in BATCH_KEYS}


def lower_oput(cfg: ModelConfig, run_cfg, mesh):
  step, _, abstract = make_train_step(cfg, run_cfg.train, 1000, mesh)
  with sharding.use_mesh(mesh, cfg.parallelism):
    return step.lower(abstract, oput_batch(run_cfg))


def is_expert_kernel(op_name: str) -> bool:
  """The dots of the expert-parallel MoE body are the expert matmuls (XLA:CPU expands each `ragged_dot`
  into dense dots over the local experts); only the expert-parallel scheme's figure is reported."""
  return "expert_parallel_moe" in op_name


def measure(lowered, memory_lowered=None) -> dict:
  t = time.perf_counter()
  compiled, text = hlo.hlo_after_partitioning(lowered)
  collectives = hlo.parse(text)
  by_op = hlo.dot_flops_by_op_name(text)
  mem = (memory_lowered.compile() if memory_lowered is not None else compiled).memory_analysis()
  return {
      "compile_s": round(time.perf_counter() - t, 1),
      "collectives": hlo.summarize(collectives),
      "by_source": hlo.wire_bytes_by(collectives, lambda c: comm_model.source_of(c.op_name)),
      "largest": [{"kind": c.kind, "result_bytes": c.result_bytes, "trip_count": c.trip_count,
                   "group_size": c.group_size, "op_name": c.op_name[-120:]} for c in hlo.largest(collectives, 8)],
      "dense_dot_flops_per_device": sum(f for op, f in by_op.items() if not is_expert_kernel(op)),
      "memory_bytes_per_device": {"arguments": mem.argument_size_in_bytes, "temp": mem.temp_size_in_bytes,
                                  "outputs": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes},
  }


def total_flops(cfg: ModelConfig, run_cfg) -> dict[str, int]:
  """Matmul FLOPs of the whole step, traced without a mesh (every `ragged_dot` row is a routed row)."""
  tx, schedule = make_optimizer(run_cfg.train, 1000)
  single = sharding.make_mesh({"fsdp": 1}, jax.devices()[:1])
  _, per = flops.traced_matmul_flops(train_step_fn(cfg, tx, schedule, run_cfg.train.block_size, run_cfg.train.on_policy),
                                     abstract_state(cfg, tx, single), oput_batch(run_cfg))
  return per


def gb(x: float) -> str:
  return f"{x / 1e9:.2f}"


def print_oput_table(mesh_spec: str, rows: dict, analytic: dict, devices: int, per: dict) -> None:
  print(f"\n## 16B OPUT step, mesh {mesh_spec} ({devices} devices)\n")
  print("| collective | gspmd: count / GB per step (as written) | expert-parallel: count / GB per step (as written) | wire GB per device per step (EP) |")
  print("|---|---|---|---|")
  kinds = sorted(set(rows["gspmd"]["collectives"]) | set(rows["expert_parallel"]["collectives"]))
  for kind in kinds:
    cells = []
    for scheme in SCHEMES:
      r = rows[scheme]["collectives"].get(kind)
      cells.append("-" if r is None else f"{r['count_per_call']} / {gb(r['result_bytes_per_call'])} "
                                          f"({r['count']} / {gb(r['result_bytes'])})")
    ep = rows["expert_parallel"]["collectives"].get(kind)
    print(f"| {kind} | {cells[0]} | {cells[1]} | {'-' if ep is None else gb(ep['wire_bytes_per_call'])} |")
  for scheme in SCHEMES:
    c = rows[scheme]["collectives"]
    print(f"\n{scheme}: total {gb(sum(r['result_bytes_per_call'] for r in c.values()))} GB per step "
          f"({gb(sum(r['result_bytes'] for r in c.values()))} GB as written), wire "
          f"{gb(sum(r['wire_bytes_per_call'] for r in c.values()))} GB per device")
  print("\n| source (expert-parallel) | measured wire GB/device/step | analytic minimum |")
  print("|---|---|---|")
  measured = rows["expert_parallel"]["by_source"]
  for source in sorted(set(measured) | set(analytic)):
    print(f"| {source} | {gb(measured.get(source, 0))} | {gb(analytic.get(source, 0)) if source in analytic else '-'} |")
  expert_total = per.get("ragged_dot_general", per.get("ragged_dot", 0))
  dense_total = sum(per.values()) - expert_total
  ep = rows["expert_parallel"]
  print(f"\nper-device matmul FLOPs (EP): non-expert {ep['dense_dot_flops_per_device'] / 1e12:.1f} TFLOP "
        f"(total/devices {dense_total / devices / 1e12:.1f}); experts {expert_total / devices / 1e12:.1f} TFLOP "
        f"(routed rows, balanced routing = total/devices)")
  for scheme in SCHEMES:
    m = rows[scheme]["memory_bytes_per_device"]
    print(f"{scheme} memory per device: arguments {gb(m['arguments'])} GB, temporaries {gb(m['temp'])} GB")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--meshes", default="fsdp=8,expert=4;fsdp=4,expert=8;data=2,fsdp=4,expert=4;expert=32",
                 help="';'-separated meshes (axis=size,...), each over all simulated devices")
  p.add_argument("--seq-len", type=int, default=None, help="override the recipe's data.max_seq_len (2048)")
  p.add_argument("--batch", type=int, default=None, help="override the recipe's global batch (8)")
  p.add_argument("--decode-batches", default="1,64", help="SPD block-step batch sizes ('' to skip decoding)")
  p.add_argument("--context", type=int, default=4096, help="decode KV-cache length")
  p.add_argument("--json", help="also write the report here")
  args = p.parse_args(argv)
  run_cfg = oput_setup(args.seq_len, args.batch)
  report = {"seq_len": run_cfg.data.max_seq_len, "global_batch": run_cfg.train.global_batch_size, "meshes": {}}
  per = total_flops(model_config(run_cfg, "expert_parallel"), run_cfg)
  report["total_matmul_flops_by_primitive"] = per
  for spec in filter(None, args.meshes.split(";")):
    mesh = sharding.make_mesh(sharding.parse_mesh(spec))
    rows = {}
    for scheme in SCHEMES:
      cfg = model_config(run_cfg, scheme)
      lowered = lower_oput(cfg, run_cfg, mesh)
      jax.clear_caches()  # the jitted step would otherwise reuse its trace with the real kernel
      with grouped_matmul_standin():
        memory_lowered = lower_oput(cfg, run_cfg, mesh)
      jax.clear_caches()
      rows[scheme] = measure(lowered, memory_lowered)
    analytic = comm_model.oput_step(model_config(run_cfg, "expert_parallel"), dict(mesh.shape),
                                    run_cfg.train.global_batch_size, run_cfg.data.max_seq_len)
    print_oput_table(spec, rows, analytic, mesh.size, per)
    decode = {}
    for batch in [int(b) for b in args.decode_batches.split(",") if b]:
      for scheme in SCHEMES:
        cfg = model_config(run_cfg, scheme).replace(param_dtype="bfloat16", dtype="bfloat16")
        decode[f"{scheme}/batch{batch}"] = measure(lower_block_step(cfg, batch, 32, args.context, mesh))
        c = decode[f"{scheme}/batch{batch}"]["collectives"]
        print(f"SPD block step, batch {batch}, {scheme}: "
              + ", ".join(f"{k} {v['count_per_call']} / {v['result_bytes_per_call'] / 1e6:.1f} MB" for k, v in c.items()))
    report["meshes"][spec] = {"oput": rows, "oput_analytic_wire_bytes": analytic, "decode": decode}
  if args.json:
    write_text_atomic(args.json, json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
