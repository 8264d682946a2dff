"""AOT-compiles the OPUT train step of the released LLaDA2.0-mini (16B) config with abstract params on a
simulated CPU mesh and reports per-device memory (`memory_analysis()`) and matmul FLOPs per step.

  XLA_FLAGS=--xla_force_host_platform_device_count=32 python benchmarks/train_aot_16b.py
  python benchmarks/train_aot_16b.py --mesh fsdp=8,expert=4 --seq-len 2048 --batch 8 --json out.json

Nothing is allocated: parameters, optimizer state and the batch are `ShapeDtypeStruct`s.
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "llada2_mini_oput.yaml"),
                 help="run config YAML (its train/model sections define the step)")
  p.add_argument("--model-config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "llada2_mini.json"),
                 help="model architecture config.json (default: the released 16B)")
  p.add_argument("--mesh", default="fsdp=8,expert=4", help="mesh axis sizes, e.g. fsdp=8,expert=4")
  p.add_argument("--devices", type=int, default=32, help="simulated CPU devices (sets XLA_FLAGS if unset)")
  p.add_argument("--seq-len", type=int, default=None, help="override data.max_seq_len")
  p.add_argument("--batch", type=int, default=None, help="override train.global_batch_size (= micro batch)")
  p.add_argument("--moe-impl", default="ragged", choices=("ragged", "tiled"),
                 help="MoE kernel (ragged = the TPU/GPU kernel; XLA:CPU lowers it to a dense dot over all experts)")
  p.add_argument("--parallelism", default="expert_parallel", choices=("expert_parallel", "gspmd"),
                 help="expert_parallel (shard_map MoE dispatch, vocab-parallel loss) or the GSPMD baseline")
  p.add_argument("--json", default=None, help="also write the report to this JSON file")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  from dmax_jax import ModelConfig, flops, sharding
  from dmax_jax.training.run_config import load_run_config
  from dmax_jax.training.step import BATCH_KEYS, make_train_step, train_step_fn
  from dmax_jax.training.optimizer import make_optimizer

  overrides = [f"model.config={args.model_config}", "model.path=null"]
  if args.seq_len:
    overrides.append(f"data.max_seq_len={args.seq_len}")
  if args.batch:
    overrides += [f"train.global_batch_size={args.batch}", f"train.micro_batch_size={args.batch}"]
  run_cfg = load_run_config(args.config, overrides)
  m = run_cfg.model
  cfg = ModelConfig.from_json(m.config, param_dtype=m.param_dtype, dtype=m.dtype, remat_policy=m.remat_policy,
                              moe_impl=args.moe_impl, parallelism=args.parallelism)
  mesh = sharding.make_mesh(sharding.parse_mesh(args.mesh))
  t = run_cfg.train
  seq = run_cfg.data.max_seq_len
  step, tx, abstract = make_train_step(cfg, t, 1000, mesh)
  batch = {k: jax.ShapeDtypeStruct((t.accumulation_steps, t.micro_batch) + (() if k == "flags" else (seq,)),
                                   jnp.bool_ if k == "flags" else jnp.int32) for k in BATCH_KEYS}
  start = time.perf_counter()
  with sharding.use_mesh(mesh, cfg.parallelism):
    lowered = step.lower(abstract, batch)
    compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  tx_, schedule = make_optimizer(t, 1000)
  # Traced without the mesh: the single-device program, whose ragged_dot rows are the routed rows.
  matmul_flops, per_primitive = flops.traced_matmul_flops(
      train_step_fn(cfg, tx_, schedule, t.block_size, t.on_policy), abstract, batch)
  tokens = t.global_batch_size * seq
  report = {
      "mesh": dict(mesh.shape), "devices": mesh.size, "seq_len": seq, "global_batch": t.global_batch_size,
      "param_dtype": cfg.param_dtype, "compute_dtype": cfg.dtype, "remat_policy": cfg.remat_policy,
      "compile_seconds": round(compile_s, 1),
      "per_device_bytes": {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
                           "temp": mem.temp_size_in_bytes, "aliased": mem.alias_size_in_bytes,
                           "generated_code": mem.generated_code_size_in_bytes},
      "per_device_peak_estimate_GiB": round((mem.argument_size_in_bytes + mem.temp_size_in_bytes
                                             + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**30, 2),
      "matmul_flops_per_step": matmul_flops, "matmul_flops_by_primitive": per_primitive,
      "flops_6NT_per_step_estimate": 6 * flops.active_matmul_parameter_count(cfg) * 2 * tokens,
      "tokens_per_step": tokens,
  }
  text = json.dumps(report, indent=2)
  print(text)
  if args.json:
    with open(args.json + ".tmp", "w") as f:
      f.write(text)
    os.replace(args.json + ".tmp", args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
