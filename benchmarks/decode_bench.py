#!/usr/bin/env python
"""Compiled decoder vs the eager reference loop (same algorithm, Python loop per step, host sync each
step, full recompute without a cache), in one process, outputs asserted equal; plus the compiled
decoder's cost per forward / per generated token at several generation lengths, and compile times.

  python benchmarks/decode_bench.py                      # fixture model + random 4-layer model
  python benchmarks/decode_bench.py --models random --gen-lengths 128,512,2048 --json out.json
  python benchmarks/decode_bench.py --mixed-batch         # DMax-tiny on a mixed batch: continuous batching

The mixed-batch run decodes 64 tiny-task test prompts with DMax-tiny at batch sizes 1, 8 and 64, two ways: one
call per batch of prompts (rows move on alone, but a batch ends with its slowest row) and one call over all 64
prompts whose freed rows take the next prompt (continuous batching), at start fractions 0, 0.5 and 1 (how many
rows wait to start their next block together; `decode_padded`). It reports tokens/s and the fraction of row
slots doing work (row-steps the prompts need / batch forwards x batch), next to the fraction a lock-step decoder
(every row waits for the slowest in each block, the decoder before rows moved on alone) would reach, computed
from the step trace.

Timings are the best of --repeats runs (the machine may be shared). CPU only by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dmax_jax import ModelConfig, init_variables  # noqa: E402
from dmax_jax.checkpoint.hf_import import load_hf_variables  # noqa: E402
from dmax_jax.decoding import DecodeOptions, pad_prompts, prompt_bucket, unpack  # noqa: E402
from dmax_jax.decoding.generate import decode_padded, lower_decoder  # noqa: E402
from dmax_jax.decoding.reference import reference_output  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "tiny_llada2")

# "a larger random model": 4 layers (1 dense), hidden 512, 16 experts
RANDOM_CONFIG = dict(vocab_size=4096, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=4, head_dim=64, intermediate_size=1536, moe_intermediate_size=256,
                     num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, num_shared_experts=1,
                     first_k_dense_replace=1, routed_scaling_factor=2.5, partial_rotary_factor=0.5,
                     rope_theta=600000.0, eos_token_id=4094, mask_token_id=4095, pad_token_id=4093)


def load(name: str):
  if name == "fixture":
    cfg = ModelConfig.from_json(FIXTURE)
    return cfg, jax.device_put(load_hf_variables(FIXTURE, cfg))
  cfg = ModelConfig(**RANDOM_CONFIG)
  import flax.linen as nn
  return cfg, nn.unbox(init_variables(cfg, jax.random.key(0)))


def compiled_run(cfg, variables, prompts, options, repeats):
  """(results, compile seconds, best decode seconds)."""
  ids, lens = pad_prompts(prompts, prompt_bucket(max(map(len, prompts)), options.block_length))
  t0 = time.perf_counter()
  lowered, args = lower_decoder(cfg, variables, ids, lens, options)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - t)
  return unpack(cfg, out, lens, options), compile_s, best


def eager_run(cfg, variables, prompts, options, repeats):
  """(results, best seconds); the first, untimed run compiles the per-length forwards."""
  lens = np.asarray([len(p) for p in prompts])
  out = reference_output(cfg, variables, prompts, options)
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    out = reference_output(cfg, variables, prompts, options)
    best = min(best, time.perf_counter() - t)
  return unpack(cfg, out, lens, options), best


def _timed(fn, repeats):
  """(output of the untimed first call, best seconds of `repeats` timed calls)."""
  out = jax.block_until_ready(fn())  # compiles once per shape
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return out, best


def _chunked(cfg, variables, prompts, options, batch, repeats):
  """Batches of `batch` prompts, one call each (a batch ends with its slowest row): (seconds, outputs)."""
  seconds, outs = 0.0, []
  for i in range(0, len(prompts), batch):
    ids, lens = pad_prompts(prompts[i:i + batch], prompt_bucket(max(map(len, prompts[i:i + batch])), 32))
    out, best = _timed(lambda: decode_padded(cfg, variables, ids, lens, options), repeats)
    seconds += best
    outs.append((out, lens))
  return seconds, outs


def _lock_step_slots(trace, rows_per_batch: int) -> int:
  """Row slots a lock-step decoder (every row of a batch waits for the slowest one in each block) would run."""
  taken = np.asarray(trace.taken)  # [iterations, steps, prompts]
  steps = taken.sum(1)             # [iterations, prompts]
  chunks = range(0, steps.shape[1], rows_per_batch)
  return int(sum(steps[:, i:i + rows_per_batch].max(1).sum() * steps[:, i:i + rows_per_batch].shape[1] for i in chunks))


def mixed_batch(repeats: int, batches=(1, 8, 64), fractions=(0.0, 0.5, 1.0), n: int = 64,
                gen_length: int = 64) -> list[dict]:
  """DMax-tiny on `n` tiny-task prompts at each batch size: one call per batch of prompts (a batch ends with its
  slowest row) versus one call over all prompts with a refilled batch (continuous batching)."""
  from dmax_jax.cli.decode import DEFAULT_CKPT
  from dmax_jax.evaluation.tasks import get_task
  from dmax_jax.loading import load_model
  from dmax_jax.tokenization import chat_ids, load_tokenizer
  cfg, variables = load_model(DEFAULT_CKPT, scan_layers=False)
  tok = load_tokenizer(DEFAULT_CKPT)
  prompts = [chat_ids(tok, [{"role": "user", "content": r["question"]}], add_generation_prompt=True)
             for r in get_task("tiny").records()[:n]]
  ids, lens = pad_prompts(prompts, prompt_bucket(max(map(len, prompts)), 32))
  rows = []
  for mode, threshold in (("spd", 0.5), ("threshold", 0.95)):
    options = DecodeOptions(mode=mode, threshold=threshold, gen_length=gen_length)
    trace = decode_padded(cfg, variables, ids, lens, DecodeOptions(mode=mode, threshold=threshold,
                                                                  gen_length=gen_length, trace=True)).trace
    for batch in batches:
      chunk_s, chunk_outs = _chunked(cfg, variables, prompts, options, batch, repeats)
      chunk_forwards = sum(int(o.batch_forwards) for o, _ in chunk_outs)
      chunk_ids = [r.generated for o, ln in chunk_outs for r in unpack(cfg, o, ln, options)]
      for fraction in fractions:
        out, queue_s = _timed(lambda: decode_padded(cfg, variables, ids, lens, options, batch_size=batch,
                                                    start_fraction=fraction), repeats)
        results = unpack(cfg, out, lens, options)
        assert [r.generated for r in results] == chunk_ids
        tokens = sum(r.num_tokens for r in results)
        needed = sum(r.nfe for r in results) - n * options.rule(cfg).counts_prefill  # row-steps the prompts need
        row = {"mode": mode, "threshold": threshold, "batch": batch, "start_fraction": fraction, "tokens": tokens,
               "row_steps_needed": needed, "chunks_tok_s": tokens / chunk_s, "queue_tok_s": tokens / queue_s,
               "queue_over_chunks": chunk_s / queue_s, "chunks_batch_forwards": chunk_forwards,
               "queue_batch_forwards": int(out.batch_forwards),
               "chunks_utilisation": needed / (chunk_forwards * batch),
               "queue_utilisation": needed / (int(out.batch_forwards) * batch),
               "lock_step_utilisation": needed / _lock_step_slots(trace, batch)}
        rows.append(row)
        print(f"DMax-tiny {mode:9s} {threshold:<4g} batch {batch:3d}: one call per batch {row['chunks_tok_s']:7.1f} "
              f"tok/s; one call, refilled, start fraction {fraction:<4g} {row['queue_tok_s']:7.1f} tok/s "
              f"(x{row['queue_over_chunks']:.2f}); row slots doing work: lock-step {row['lock_step_utilisation']:.2f}, "
              f"per batch {row['chunks_utilisation']:.2f}, refilled {row['queue_utilisation']:.2f}", flush=True)
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="fixture,random", help="comma list of: fixture, random")
  p.add_argument("--modes", default="spd,threshold", help="comma list of decoding modes to compare with eager")
  p.add_argument("--gen-lengths", default="128,512,2048", help="generation lengths of the per-token cost sweep")
  p.add_argument("--compare-gen-length", type=int, default=128, help="generation length of compiled vs eager")
  p.add_argument("--block-length", type=int, default=32, help="block length (default 32, as DMax)")
  p.add_argument("--prompt-length", type=int, default=40, help="random prompt length")
  p.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
  p.add_argument("--mixed-batch", action="store_true", help="only the mixed-batch run (DMax-tiny, see above)")
  p.add_argument("--mixed-batch-sizes", default="1,8,64", help="batch sizes of the mixed-batch run")
  p.add_argument("--mixed-start-fractions", default="0,0.5,1", help="start fractions of the mixed-batch run")
  p.add_argument("--mixed-gen-length", type=int, default=64, help="generation length of the mixed-batch run")
  p.add_argument("--json", help="also write the results to this JSON file")
  args = p.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", "highest")
  report = {"devices": str(jax.devices()), "runs": [], "sweep": []}
  if args.mixed_batch:
    report["mixed_batch"] = mixed_batch(args.repeats, tuple(map(int, args.mixed_batch_sizes.split(","))),
                                        tuple(map(float, args.mixed_start_fractions.split(","))),
                                        gen_length=args.mixed_gen_length)
    args.models = ""
  for name in filter(None, args.models.split(",")):
    cfg, variables = load(name)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size - 8, args.prompt_length).tolist()
    for mode in filter(None, args.modes.split(",")):
      options = DecodeOptions(mode=mode, block_length=args.block_length, gen_length=args.compare_gen_length)
      fast, compile_s, fast_s = compiled_run(cfg, variables, [prompt], options, args.repeats)
      slow, slow_s = eager_run(cfg, variables, [prompt], options, args.repeats)
      assert (fast[0].generated, fast[0].nfe) == (slow[0].generated, slow[0].nfe), (name, mode)
      row = {"model": name, "mode": mode, "gen_length": options.gen_length, "nfe": fast[0].nfe,
             "tokens": fast[0].num_tokens, "compile_s": compile_s, "compiled_s": fast_s, "eager_s": slow_s,
             "compiled_tok_s": fast[0].num_tokens / fast_s, "eager_tok_s": slow[0].num_tokens / slow_s,
             "speedup": slow_s / fast_s}
      report["runs"].append(row)
      print(f"{name:8s} {mode:9s} G={options.gen_length} NFE={row['nfe']:4d} tokens={row['tokens']:4d}  "
            f"compiled {row['compiled_tok_s']:8.1f} tok/s  eager {row['eager_tok_s']:7.1f} tok/s  "
            f"speed-up x{row['speedup']:.1f}  (compile {compile_s:.1f} s)", flush=True)
    for gen_length in map(int, args.gen_lengths.split(",")):
      # threshold 0.95 on these models commits ~1 token per forward: the forward count grows with G
      options = DecodeOptions(mode="threshold", block_length=args.block_length, gen_length=gen_length)
      res, compile_s, secs = compiled_run(cfg, variables, [prompt], options, args.repeats)
      row = {"model": name, "gen_length": gen_length, "nfe": res[0].nfe, "tokens": res[0].num_tokens,
             "ms_per_forward": 1e3 * secs / res[0].nfe, "ms_per_token": 1e3 * secs / max(res[0].num_tokens, 1),
             "compile_s": compile_s}
      report["sweep"].append(row)
      print(f"{name:8s} threshold G={gen_length:5d} NFE={row['nfe']:5d}  {row['ms_per_forward']:.2f} ms/forward  "
            f"{row['ms_per_token']:.2f} ms/token  (compile {compile_s:.1f} s)", flush=True)
  if args.json:
    from dmax_jax.io import write_text_atomic
    write_text_atomic(args.json, json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
