"""OPUT train-step throughput on this machine: tokens/s and an MFU estimate.

MFU = (matmul FLOPs of one train step, counted from its jaxpr: rollout forward + training forward and
backward) / step time / (peak matmul FLOP/s measured here with a large float32 matmul). Also reports
the cost of the on-policy rollout as the ratio of the OPUT step time to the plain masked-diffusion step.

  python benchmarks/train_bench.py                 # tiny + larger random config, one CPU device
  python benchmarks/train_bench.py --steps 10 --json bench.json
"""

import argparse
import dataclasses
import json
import os
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 2 warm-up steps)")
  p.add_argument("--configs", default="tiny,larger", help="comma-separated subset of: tiny, larger")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def peak_matmul_flops(jax, jnp, n=2048, reps=5):
  """Best-of-`reps` FLOP/s of an `n x n @ n x n` float32 matmul on the first device."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def bench_config(name, cfg, seq, batch, steps, peak):
  import jax
  import numpy as np
  import flax.linen as nn
  from dmax_jax import flops, sharding
  from dmax_jax.model import init_variables
  from dmax_jax.training.run_config import TrainSection
  from dmax_jax.training.step import global_batch, init_state, make_train_step, train_step_fn

  mesh = sharding.make_mesh({"fsdp": 1}, jax.devices()[:1])
  rng = np.random.default_rng(0)
  clean = rng.integers(0, cfg.mask_token_id, (batch, seq)).astype(np.int32)
  host = {"clean_ids": clean, "labels": clean,
          "noisy_ids": np.where(rng.random((batch, seq)) < 0.75, cfg.mask_token_id, clean).astype(np.int32),
          "flags": np.ones(batch, bool)}
  variables = nn.unbox(jax.jit(lambda k: init_variables(cfg, k))(jax.random.key(0)))
  out = {"config": name, "seq_len": seq, "batch": batch, "hidden": cfg.hidden_size,
         "layers": cfg.num_hidden_layers, "experts": cfg.num_experts, "vocab": cfg.vocab_size}
  for on_policy in (True, False):
    train = TrainSection(global_batch_size=batch, block_size=min(32, seq), warmup_ratio=0.0, on_policy=on_policy)
    step, tx, abstract = make_train_step(cfg, train, 1000, mesh)
    with sharding.use_mesh(mesh):
      state = init_state(jax.tree.map(lambda x: x.copy(), variables), tx, abstract)
      gb = global_batch(host, 1, mesh)
      t = time.perf_counter()
      state, m = step(state, gb)
      jax.block_until_ready(m)
      compile_s = time.perf_counter() - t
      state, m = step(state, gb)
      jax.block_until_ready(m)
      t = time.perf_counter()
      for _ in range(steps):
        state, m = step(state, gb)
      jax.block_until_ready((state, m))
      step_s = (time.perf_counter() - t) / steps
      tx_flops, _ = flops.traced_matmul_flops(
          train_step_fn(cfg, tx, lambda s: 0.0, train.block_size, on_policy), abstract,
          {k: jax.ShapeDtypeStruct((1,) + v.shape, v.dtype) for k, v in host.items()})
    key = "oput" if on_policy else "sft"
    out[f"{key}_step_s"] = step_s
    out[f"{key}_first_call_s"] = compile_s
    out[f"{key}_tokens_per_s"] = batch * seq / step_s
    out[f"{key}_matmul_flops"] = tx_flops
    out[f"{key}_mfu"] = tx_flops / step_s / peak
  out["oput_over_sft_step_time"] = out["oput_step_s"] / out["sft_step_s"]
  return out


def main(argv=None):
  args = parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  from dmax_jax import ModelConfig
  tiny = ModelConfig.from_json(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_model.json"))
  larger = dataclasses.replace(tiny, vocab_size=8192, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                               num_key_value_heads=4, head_dim=64, intermediate_size=1408, moe_intermediate_size=256,
                               num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, pad_token_id=8186,
                               eos_token_id=8187, mask_token_id=8191)
  setups = {"tiny": (tiny, 64, 8), "larger": (larger, 256, 4)}
  peak = peak_matmul_flops(jax, jnp)
  print(f"peak float32 matmul: {peak / 1e9:.1f} GFLOP/s on {jax.devices()[0]}")
  results = {"peak_matmul_flops": peak, "device": str(jax.devices()[0]), "configs": []}
  for name in args.configs.split(","):
    cfg, seq, batch = setups[name]
    r = bench_config(name, cfg, seq, batch, args.steps, peak)
    results["configs"].append(r)
    print(f"{name:7s} seq {seq} x batch {batch}: OPUT {r['oput_tokens_per_s']:8.0f} tok/s, MFU {r['oput_mfu']:.1%}, "
          f"step {r['oput_step_s'] * 1e3:.0f} ms (SFT {r['sft_step_s'] * 1e3:.0f} ms, OPUT/SFT "
          f"{r['oput_over_sft_step_time']:.2f}x), first call {r['oput_first_call_s']:.0f} s")
  if args.json:
    with open(args.json + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(args.json + ".tmp", args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
