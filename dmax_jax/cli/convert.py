"""Convert LLaDA2-MoE / DMax checkpoints between Hugging Face safetensors and dmax-jax (Orbax).

  python convert_weights.py hf-to-jax  HF_DIR  OUT_DIR [--dtype bfloat16]
  python convert_weights.py jax-to-hf  JAX_DIR OUT_DIR [--merged-experts] [--shard-size 5GB] [--dtype ...]

Both directions stream tensor by tensor and write to a hidden temporary folder beside OUT_DIR that is
renamed at the end, so an interrupted run never leaves a complete-looking checkpoint. `dmax-convert` is the
same command. Bad input is one `error:` line and exit status 2 (`--debug` for the traceback).
"""

from __future__ import annotations

import argparse
import logging

from dmax_jax.checkpoint.convert import hf_to_jax, jax_to_hf, parse_size
from dmax_jax.cli.policy import Parser, command


def _size(text: str) -> int:
  try:
    return parse_size(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> Parser:
  parser = Parser(description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--overwrite", action="store_true",
                      help="replace OUT_DIR if it exists (it is only replaced after the conversion succeeded)")
  common.add_argument("--no-progress", action="store_true", help="do not show the per-tensor progress bar")

  to_jax = sub.add_parser(
      "hf-to-jax", parents=[common], help="Hugging Face folder -> dmax-jax Orbax checkpoint",
      description="Read config.json + safetensors (single or sharded with model.safetensors.index.json, "
                  "per-expert or merged experts, float32 or bfloat16) and write config.json (verbatim), "
                  "params/ (Orbax), dmax_checkpoint.json and copies of the tokenizer files.")
  to_jax.add_argument("src", metavar="HF_DIR", help="Hugging Face checkpoint folder (config.json + *.safetensors)")
  to_jax.add_argument("dst", metavar="OUT_DIR", help="output folder (must not exist unless --overwrite)")
  to_jax.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                      help="parameter dtype to store (default: the checkpoint's own); the router's "
                           "expert_bias buffer always stays float32")

  to_hf = sub.add_parser(
      "jax-to-hf", parents=[common], help="dmax-jax Orbax checkpoint -> Hugging Face folder",
      description="Write Hugging Face safetensors loadable by the official PyTorch code: sharded files "
                  "model-0000X-of-0000N.safetensors + model.safetensors.index.json (or one "
                  "model.safetensors when it fits in one shard), config.json with the original "
                  "auto_map/architectures, and the tokenizer files.")
  to_hf.add_argument("src", metavar="JAX_DIR", help="folder written by hf-to-jax")
  to_hf.add_argument("dst", metavar="OUT_DIR", help="output folder (must not exist unless --overwrite)")
  to_hf.add_argument("--merged-experts", action="store_true",
                     help="write each MoE layer's experts stacked as mlp.experts.{gate,up,down}_proj "
                          "[experts, out, in] (dFactory training layout) instead of the official "
                          "per-expert mlp.experts.N.*.weight tensors")
  to_hf.add_argument("--shard-size", type=_size, default="5GB",
                     help="maximum size of one safetensors file, e.g. 500MB, 5GB, 2GiB (default 5GB, "
                          "decimal units like transformers)")
  to_hf.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                     help="parameter dtype of the output (default: as stored); expert_bias keeps the "
                          "dtype it had in the original Hugging Face checkpoint")
  return parser


@command
def main(argv) -> int:
  args = build_parser().parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's informational warnings
  if args.command == "hf-to-jax":
    summary = hf_to_jax(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                        progress=not args.no_progress)
  else:
    summary = jax_to_hf(args.src, args.dst, merged_experts=args.merged_experts, shard_size=args.shard_size,
                        dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress)
  print(f"{args.command}: wrote {args.dst}: {summary}")
  return 0

