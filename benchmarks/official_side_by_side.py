#!/usr/bin/env python
"""This project's compiled SPD decoder against the official DMax PyTorch decoder, same checkpoint, same
prompts, same machine, alternated in one process.

The official side is DMax's own code, imported from a checkout of github.com/czg1225/DMax: the SPD loop of
its vendored dInfer (`BlockDiffusionLLM.naive_batching_generate_uniform`, `ThresholdParallelDecoder.
decode_uniform`, prefix KV cache) over dInfer's LLaDA2 model, float32, SDPA attention, with vLLM's CUDA-only
fused-MoE kernel replaced by the sorted per-expert loop of the official Hugging Face modeling file
(`benchmarks/official/`). Both decode greedily with block 32; each setting is timed after one untimed
warm-up call per side (this project compiles there), best of --repeats, the two sides alternating.
Reported per setting: decode seconds, tokens/s (generated tokens up to eos, all rows), forwards/s (batch
forwards, the prefill included, as dInfer counts them), NFE, and whether both produced the same tokens. On
random models near-tied logits may send the two float32 implementations down different paths; forwards/s
is the comparable figure there.

  python benchmarks/official_side_by_side.py --dmax-repo ~/DMax             # needs torch (CPU) installed
  python benchmarks/official_side_by_side.py --dmax-repo ~/DMax --settings mid-b1,mid-b8 --json out.json

Settings (model, batch, generation length): the fixture and DMax-tiny use their own weights (DMax-tiny
on tiny-task test prompts of one token length); `mid` and `mini_like` are random models of
`benchmarks/decode_speed.py` written once as Hugging Face folders under --work-dir, prompted with random
token ids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.decode_speed import MODELS as RANDOM_MODELS  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "tiny_llada2")
SETTINGS = {  # name: (model, batch, gen_length)
    "fixture-b1": ("fixture", 1, 256),
    "tiny-b1": ("dmax_tiny", 1, 256),
    "tiny-b8": ("dmax_tiny", 8, 256),
    "mid-b1": ("mid", 1, 256),
    "mid-b8": ("mid", 8, 64),
    "mini_like-b1": ("mini_like", 1, 256),
}


def model_folder(name: str, work_dir: str) -> str:
  """A Hugging Face folder holding model `name` (written once for the random models)."""
  if name == "fixture":
    return FIXTURE
  if name == "dmax_tiny":
    from dmax_jax.cli.decode import DEFAULT_CKPT
    return DEFAULT_CKPT
  folder = os.path.join(work_dir, name)
  if os.path.exists(os.path.join(folder, "config.json")):
    return folder
  import flax.linen as nn
  import jax
  from dmax_jax import ModelConfig, init_variables
  from dmax_jax.checkpoint.convert import variables_to_hf
  from dmax_jax.experiments.tiny_dmax.model_config import write_hf_config
  cfg = ModelConfig(**RANDOM_MODELS[name])
  variables = nn.unbox(init_variables(cfg, jax.random.key(0)))
  with tempfile.TemporaryDirectory() as config_dir:
    variables_to_hf(variables, cfg, folder, source=write_hf_config(cfg, config_dir))
  return folder


def prompts_for(model: str, folder: str, batch: int, prompt_length: int, seed: int) -> list[list[int]]:
  """`batch` prompts of one token length (dInfer pads a batch's prompts with masks it then decodes)."""
  from dmax_jax import ModelConfig
  if model == "dmax_tiny":
    from dmax_jax.evaluation.tasks import get_task
    from dmax_jax.tokenization import chat_ids, load_tokenizer
    tok = load_tokenizer(folder)
    prompts = [chat_ids(tok, [{"role": "user", "content": r["question"]}], add_generation_prompt=True)
               for r in get_task("tiny").records()]
    length, _ = Counter(map(len, prompts)).most_common(1)[0]
    return [p for p in prompts if len(p) == length][:batch]
  cfg = ModelConfig.from_json(folder)
  special = min(i for i in (cfg.eos_token_id, cfg.mask_token_id, cfg.pad_token_id) if i is not None)
  return np.random.default_rng(seed).integers(0, special, (batch, prompt_length)).tolist()


class OfficialSide:
  """The official decoder over one checkpoint."""

  def __init__(self, dinfer, folder: str, threshold: float, eos_id: int, mask_id: int):
    from benchmarks.official.dinfer import load_model, spd_generator
    self.generator = spd_generator(dinfer, load_model(dinfer, folder), threshold, mask_id, eos_id)
    self.eos_id = eos_id

  def __call__(self, prompts, gen_length: int, block_length: int) -> dict:
    import torch
    self.generator.diff_iteration.num_forwards = 0
    start = time.perf_counter()
    out = self.generator.generate(torch.tensor(prompts), gen_length=gen_length, block_length=block_length)
    seconds = time.perf_counter() - start
    rows = out.tolist()  # batch 1: the sequence without eos ids; batch > 1: the whole array
    answers = [[t for t in row[len(p):] if t != self.eos_id] for row, p in zip(rows, prompts)]
    return dict(seconds=seconds, answers=answers, forwards=int(self.generator.num_forwards))


class ProjectSide:
  """This project's compiled decoder over one checkpoint (the decode layout `decode.py` loads)."""

  def __init__(self, folder: str, threshold: float):
    from dmax_jax.loading import load_model
    self.cfg, self.variables = load_model(folder, scan_layers=False)
    self.threshold = threshold

  def __call__(self, prompts, gen_length: int, block_length: int) -> dict:
    import jax
    from dmax_jax.decoding import DecodeOptions, pad_prompts, prompt_bucket, unpack
    from dmax_jax.decoding.generate import decode_padded
    options = DecodeOptions(mode="spd", block_length=block_length, gen_length=gen_length, threshold=self.threshold)
    ids, lens = pad_prompts(prompts, prompt_bucket(max(map(len, prompts)), block_length))
    start = time.perf_counter()
    out = jax.block_until_ready(decode_padded(self.cfg, self.variables, ids, lens, options))
    seconds = time.perf_counter() - start
    eos_id, _ = options.special_ids(self.cfg)
    answers = [[t for t in r.generated if t != eos_id] for r in unpack(self.cfg, out, lens, options)]
    return dict(seconds=seconds, answers=answers, forwards=int(out.batch_forwards) + 1)  # + the prefill


def compare(setting: str, dinfer, args) -> dict:
  from dmax_jax import ModelConfig
  model, batch, gen_length = SETTINGS[setting]
  folder = model_folder(model, args.work_dir)
  cfg = ModelConfig.from_json(folder)
  prompts = prompts_for(model, folder, batch, args.prompt_length, args.seed)
  sides = {"official": OfficialSide(dinfer, folder, args.threshold, cfg.eos_token_id, cfg.mask_token_id),
           "jax": ProjectSide(folder, args.threshold)}
  runs = {name: side(prompts, gen_length, args.block_length) for name, side in sides.items()}  # warm-up
  best = {name: np.inf for name in sides}
  for _ in range(args.repeats):
    for name, side in sides.items():
      best[name] = min(best[name], side(prompts, gen_length, args.block_length)["seconds"])
  row = dict(setting=setting, model=model, batch=batch, gen_length=gen_length, prompt_length=len(prompts[0]),
             same_tokens=runs["official"]["answers"] == runs["jax"]["answers"])
  for name, run in runs.items():
    tokens = sum(map(len, run["answers"]))
    row[name] = dict(seconds=best[name], tokens=tokens, nfe=run["forwards"], tok_per_s=tokens / best[name],
                     fwd_per_s=run["forwards"] / best[name])
  row["tok_per_s_ratio"] = row["jax"]["tok_per_s"] / row["official"]["tok_per_s"]
  row["fwd_per_s_ratio"] = row["jax"]["fwd_per_s"] / row["official"]["fwd_per_s"]
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dmax-repo", required=True, help="a checkout of github.com/czg1225/DMax (its dInfer/ is used)")
  p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {list(SETTINGS)}")
  p.add_argument("--threshold", type=float, default=0.5, help="SPD commit confidence (both sides)")
  p.add_argument("--block-length", type=int, default=32, help="tokens per block")
  p.add_argument("--prompt-length", type=int, default=64, help="random prompt length (fixture, random models)")
  p.add_argument("--repeats", type=int, default=2, help="timed calls per side after the warm-up (best is kept)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  p.add_argument("--seed", type=int, default=0, help="random prompts' seed")
  p.add_argument("--work-dir", default=None, help="where random models are written (default: a temporary folder)")
  p.add_argument("--json", default=None, help="also write the rows here")
  args = p.parse_args(argv)
  unknown = set(args.settings.split(",")) - set(SETTINGS)
  if unknown:
    p.error(f"unknown setting(s) {sorted(unknown)}; choose from {list(SETTINGS)}")
  try:
    import torch
  except ImportError:
    p.error("the official side needs torch: pip install torch (the CPU build is enough)")
  torch.set_num_threads(args.threads)
  from benchmarks.official.dinfer import import_dinfer
  dinfer = import_dinfer(os.path.expanduser(args.dmax_repo))
  temporary = args.work_dir is None
  args.work_dir = tempfile.mkdtemp(prefix="side_by_side_") if temporary else args.work_dir
  rows = []
  try:
    print(f"{'setting':<13} {'official tok/s':>14} {'jax tok/s':>10} {'official fwd/s':>14} {'jax fwd/s':>10} "
          f"{'NFE off/jax':>11} {'same':>5} {'jax/official (tok/s, fwd/s)':>28}")
    for setting in args.settings.split(","):
      row = compare(setting, dinfer, args)
      rows.append(row)
      off, jx = row["official"], row["jax"]
      print(f"{setting:<13} {off['tok_per_s']:14.1f} {jx['tok_per_s']:10.1f} {off['fwd_per_s']:14.2f} "
            f"{jx['fwd_per_s']:10.2f} {off['nfe']:>5}/{jx['nfe']:<5} {str(row['same_tokens']):>5} "
            f"{row['tok_per_s_ratio']:13.2f}x, {row['fwd_per_s_ratio']:.2f}x", flush=True)
  finally:
    if temporary:
      shutil.rmtree(args.work_dir, ignore_errors=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, threads=args.threads, threshold=args.threshold, block_length=args.block_length,
                     repeats=args.repeats), f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
