"""Generate with a LLaDA2-MoE checkpoint: DMax soft parallel decoding (SPD) or LLaDA2.0 threshold decoding,
the whole generation compiled into one XLA program.

With no arguments it decodes a sample word problem with DMax-tiny, the small DMax model trained on this
CPU by `python -m dmax_jax.experiments.tiny_dmax` and shipped in checkpoints/dmax-tiny.

Examples (`dmax-decode` is the same command, installed by pip):
  python decode.py
  python decode.py --prompt "Mia has 9 pens. She buys 2 boxes with 3 pens each. She loses 4 pens. How many pens does Mia have now?"
  python decode.py --ckpt CKPT --prompt "What is 12 + 30?"
  python decode.py --ckpt ../shared/fixtures/tiny_llada2 --prompt-ids 207,226,139,65,149 \\
      --block-length 8 --gen-length 24 --threshold 0.5 --json
  python decode.py --ckpt CKPT --batch-file prompts.txt --mode threshold --html replay.html

Bad input is one `error:` line and exit status 2 (`--debug` for the traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from dmax_jax.cli.decoding_flags import add_decoding_flags, decode_options, mesh_from_flag
from dmax_jax.cli.policy import Parser, command, nonnegative_int, positive_int, warn
from dmax_jax.errors import InputError

# The checkpoint used when --ckpt is omitted, and the user message decoded when no prompt is given with it:
# problem 2 of the tiny-DMax test split (never seen in training), the first one DMax-tiny solves with a
# fully correct worked solution (it gets ~3/4 of the test problems right). Change them here only.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CKPT = os.path.join(REPO_ROOT, "checkpoints", "dmax-tiny")
DEFAULT_PROMPT = ("Zoe has 8 pens. She loses 2 pens. She shares them equally among 3 friends. "
                  "How many pens does each friend get?")


def parse_args(argv):
  p = Parser(description=__doc__)
  p.add_argument("--ckpt", default=DEFAULT_CKPT,
                 help="checkpoint directory: converted by convert_weights.py, or a Hugging Face directory "
                      "(config.json + safetensors; a tokenizer there enables --prompt and text output) "
                      "(default: DMax-tiny, checkpoints/dmax-tiny)")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--prompt", help="a user message, wrapped in the checkpoint tokenizer's chat template "
                                    "(default with the default checkpoint: a sample word problem)")
  src.add_argument("--prompt-ids", help="comma-separated prompt token ids, used as they are (no template)")
  src.add_argument("--batch-file", help="one prompt per line, decoded in one call; a line of comma-separated "
                                        "integers is token ids, any other line a chat message")
  add_decoding_flags(p)
  p.add_argument("--batch-size", type=positive_int,
                 help="with --batch-file: rows decoded at once, a row that finishes taking the next prompt "
                      "(default: every prompt at once); answers do not depend on it")
  p.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed; prompt i uses fold_in(seed, i)")
  p.add_argument("--json", action="store_true",
                 help="print one JSON object as the last stdout line: ids, text, nfe, tpf, num_tokens, "
                      "stopped_by_eos and timings (per-row lists for --batch-file)")
  p.add_argument("--html", metavar="FILE",
                 help="write a self-contained page replaying the decoding step by step (first row of a batch)")
  p.add_argument("--strict", action="store_true",
                 help="stop with an error when a prompt has words outside the tokenizer's vocabulary (default: "
                      "warn; they become the unknown token)")
  return p.parse_args(argv)


def _parse_ids(text: str) -> list[int]:
  try:
    return [int(t) for t in text.replace(" ", "").split(",") if t]
  except ValueError:
    raise InputError(f"--prompt-ids expects comma-separated integers, got {text!r}") from None


def _chat_ids(tokenizer, message: str, strict: bool) -> list[int]:
  if tokenizer is None:
    raise InputError("the checkpoint has no tokenizer; pass token ids with --prompt-ids")
  if not message.strip():
    raise InputError("the prompt is empty")
  from dmax_jax.tokenization import chat_ids, unknown_words
  unknown = unknown_words(tokenizer, message)
  if unknown:
    note = (f"{len(unknown)} word(s) of the prompt are not in the tokenizer's vocabulary and become "
            f"{tokenizer.unk_token}: {', '.join(map(repr, unknown))}")
    if strict:
      raise InputError(f"{note} (--strict)")
    warn(note)
  return chat_ids(tokenizer, [{"role": "user", "content": message}], add_generation_prompt=True)


def _prompts(args, tokenizer) -> list[list[int]]:
  if args.batch_size is not None and args.batch_file is None:
    raise InputError("--batch-size needs --batch-file")
  if args.prompt_ids is not None:
    return [_parse_ids(args.prompt_ids)]
  if args.prompt is not None:
    return [_chat_ids(tokenizer, args.prompt, args.strict)]
  if args.batch_file is None:
    if os.path.abspath(args.ckpt) != DEFAULT_CKPT:
      raise InputError("give a prompt: --prompt, --prompt-ids or --batch-file")
    print(f"prompt: {DEFAULT_PROMPT}")
    return [_chat_ids(tokenizer, DEFAULT_PROMPT, args.strict)]
  if not os.path.isfile(args.batch_file):
    raise InputError(f"--batch-file {args.batch_file}: no such file")
  with open(args.batch_file) as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  if not lines:
    raise InputError(f"--batch-file {args.batch_file} has no prompts")
  return [_parse_ids(line) if line.replace(",", "").replace(" ", "").isdigit()
          else _chat_ids(tokenizer, line, args.strict) for line in lines]


def _check_paths(args) -> None:
  """Fails before any work on paths that cannot be read or written."""
  if not os.path.isdir(args.ckpt):
    raise InputError(f"--ckpt {args.ckpt}: no such checkpoint directory")
  if args.html is not None:
    if os.path.isdir(args.html):
      raise InputError(f"--html {args.html} is a directory: give a file name, e.g. {args.html}/replay.html")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.html))):
      raise InputError(f"--html {args.html}: the folder it would go in does not exist")


@command
def main(argv) -> int:
  args = parse_args(argv)
  _check_paths(args)
  import jax

  from dmax_jax import load_model, sharding
  from dmax_jax.compile_time import compile_seconds
  from dmax_jax.decoding import pad_prompts, prompt_bucket, row_keys, unpack, validate_prompts
  from dmax_jax.decoding.generate import decoder_call
  from dmax_jax.decoding.html import write_replay
  from dmax_jax.tokenization import load_tokenizer

  tokenizer = load_tokenizer(args.ckpt)
  prompts = _prompts(args, tokenizer)
  options = decode_options(args, trace=args.html is not None)
  mesh = mesh_from_flag(args.mesh)
  cfg, variables = load_model(args.ckpt, mesh=mesh, scan_layers=False)  # unrolled layers: faster decoding
  validate_prompts(cfg, prompts, options)

  width = prompt_bucket(max(len(p) for p in prompts), options.block_length)
  ids, lens = pad_prompts(prompts, width)
  fn, call_args = decoder_call(cfg, variables, ids, lens, options, row_keys(args.seed, len(prompts)), args.batch_size)
  compiled_before = compile_seconds()
  t0 = time.perf_counter()
  with sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    out = jax.block_until_ready(fn(*call_args))
  compile_s = compile_seconds() - compiled_before  # 0 when this process already compiled the bucket
  decode_s = time.perf_counter() - t0 - compile_s
  results = unpack(cfg, out, lens, options)
  total_tokens = sum(r.num_tokens for r in results)

  def text(token_ids):
    return None if tokenizer is None else tokenizer.decode(token_ids, skip_special_tokens=True)

  for i, r in enumerate(results):
    head = f"[{i}] " if len(results) > 1 else ""
    shown = text(r.ids)
    print(f"{head}answer: {shown if shown is not None else r.ids}")
    print(f"{head}NFE {r.nfe}  TPF {r.tpf:.3f}  tokens {r.num_tokens}  stopped_by_eos {r.stopped_by_eos}")
  print(f"compile {compile_s:.2f} s  decode {decode_s:.3f} s  {total_tokens / decode_s:.1f} tokens/s")
  if args.html:
    _, mask_id = options.special_ids(cfg)
    write_replay(args.html, prompts[0], results[0], mask_id, options.block_length,
                 token_text=(lambda t: tokenizer.decode([t])) if tokenizer is not None else None)
    print(f"replay written to {args.html}")
  if args.json:
    rows = [{"ids": r.ids, "text": text(r.ids), "nfe": r.nfe, "tpf": r.tpf, "num_tokens": r.num_tokens,
             "generated": r.generated, "stopped_by_eos": r.stopped_by_eos} for r in results]
    record = rows[0] if len(rows) == 1 else {k: [row[k] for row in rows] for k in rows[0]}
    record.update({"mode": args.mode, "compile_s": compile_s, "decode_s": decode_s,
                   "tokens_per_s": total_tokens / decode_s})
    print(json.dumps(record))
  return 0

