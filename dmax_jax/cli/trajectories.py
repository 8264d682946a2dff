"""Build DMax's OPUT training data: a base model answers a JSONL of prompts (rows with a `question`), and each
kept answer becomes two rows of OUTPUT/oput.jsonl (flag true and false, shuffled), the file `train.py` reads
as `data.train_path`.

A kept answer ended with EOS and, with --verify TASK, is correct under that task's strict scorer (the prompt
rows then need the task's reference fields too, e.g. `answer` for gsm8k). Decoding appends to
OUTPUT/responses-<i>-of-<N>.jsonl after each decoding call of 8 batches: a rerun resumes. On several hosts, run shard i of N on each
(--shard-index/--num-shards, default: this JAX process's index and count), then once with --build-only.

Examples (`python -m dmax_jax.trajectories` = `dmax-trajectories`):
  dmax-trajectories --ckpt checkpoints/LLaDA2.0-mini --prompts math_prompts.jsonl --output data/traj --verify gsm8k
  dmax-trajectories --ckpt CKPT --prompts p.jsonl --output data/traj --shard-index 3 --num-shards 8
  dmax-trajectories --prompts p.jsonl --output data/traj --num-shards 8 --build-only
"""

from __future__ import annotations

import os

from dmax_jax import trajectories
from dmax_jax.cli.decoding_flags import add_decoding_flags, decode_options, mesh_from_flag
from dmax_jax.cli.policy import Parser, command, nonnegative_int, positive_int
from dmax_jax.errors import InputError
from dmax_jax.evaluation.tasks import NAMES, get_task

_D = trajectories.DEFAULT_OPTIONS


def parse_args(argv):
  p = Parser(description=__doc__)
  p.add_argument("--ckpt", help="the base model's checkpoint directory, with a tokenizer (not needed with --build-only)")
  p.add_argument("--prompts", required=True, help="JSONL (or .json/.parquet) rows with a `question` field")
  p.add_argument("--output", required=True, help="directory for the response shards and oput.jsonl")
  p.add_argument("--verify", choices=NAMES, help="keep only answers this task's strict scorer accepts")
  p.add_argument("--limit", type=positive_int, help="the first N prompts only (default: all)")
  p.add_argument("--batch-size", type=positive_int, default=8, help="rows decoded at once (default 8); a row that finishes takes the next prompt")
  p.add_argument("--shard-index", type=nonnegative_int, help="this host's shard (default: jax.process_index())")
  p.add_argument("--num-shards", type=positive_int, help="number of shards (default: jax.process_count())")
  p.add_argument("--build-only", action="store_true", help="only merge the finished shards into oput.jsonl")
  p.add_argument("--seed", type=nonnegative_int, default=trajectories.OPUT_SHUFFLE_SEED,
                 help=f"shuffle seed of oput.jsonl (default {trajectories.OPUT_SHUFFLE_SEED}, DMax's)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  add_decoding_flags(p, threshold_default=f"{_D.threshold} threshold mode, 0.5 SPD", mode_default=_D.mode,
                     gen_length_default=_D.gen_length)
  return p.parse_args(argv)


@command
def main(argv) -> int:
  args = parse_args(argv)
  records = trajectories.read_prompts(args.prompts)[:args.limit]
  import jax
  index = jax.process_index() if args.shard_index is None else args.shard_index
  count = jax.process_count() if args.num_shards is None else args.num_shards
  if not 0 <= index < count:
    raise InputError(f"--shard-index {index} must be in [0, --num-shards {count})")
  if not args.build_only:
    if not args.ckpt or not os.path.isdir(args.ckpt):
      raise InputError(f"--ckpt {args.ckpt}: no such checkpoint directory")
    options = decode_options(args, threshold=_D.threshold if args.mode == "threshold" else None)
    from dmax_jax import load_model
    from dmax_jax.evaluation.runner import Model
    from dmax_jax.tokenization import load_tokenizer
    tokenizer = load_tokenizer(args.ckpt)
    if tokenizer is None:
      raise InputError(f"--ckpt {args.ckpt} has no tokenizer")
    if args.mesh and jax.process_count() > 1:
      raise InputError("--mesh spans every host's devices, but each host decodes its own shard: run without "
                       "--mesh on multi-host slices (one shard per host)")
    mesh = mesh_from_flag(args.mesh)
    cfg, variables = load_model(args.ckpt, mesh=mesh, scan_layers=False)
    done = trajectories.decode_shard(Model(cfg, variables, tokenizer, args.ckpt, mesh), records, options,
                                     args.output, index, count, args.batch_size,
                                     get_task(args.verify) if args.verify else None, progress=not args.quiet)
    print(f"shard {index}/{count}: {done['kept']} of {done['prompts']} answers kept")
    if count > 1:
      print(f"when every shard is done: --build-only --num-shards {count}")
      return 0
  built = trajectories.build_oput(args.output, count, len(records), args.seed)
  print(f"{built['rows']} OPUT rows ({built['kept']} kept answers x flag true/false) in "
        f"{os.path.join(args.output, 'oput.jsonl')}")
  return 0
