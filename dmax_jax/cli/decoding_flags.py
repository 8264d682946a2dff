"""The decoding flags shared by `dmax-decode` and `dmax-evaluate`; their defaults are `DecodeOptions`'."""

from __future__ import annotations

import argparse

from dmax_jax.cli.policy import confidence, nonnegative_float, positive_int, warn
from dmax_jax.errors import InputError
from dmax_jax.decoding.options import DEFAULT_THRESHOLD, MODES, TRAINED_BLOCK_LENGTH, DecodeOptions

_DEFAULTS = DecodeOptions()
_THRESHOLDS = ", ".join(f"{v} {m}" for m, v in DEFAULT_THRESHOLD.items())


def add_decoding_flags(p: argparse.ArgumentParser, threshold_default: str = _THRESHOLDS,
                       gen_length_default: int | None = _DEFAULTS.gen_length, gen_length_help: str = "",
                       mode_default: str = _DEFAULTS.mode) -> None:
  """--mode --threshold --converge-threshold --block-length --steps --gen-length --temperature --mesh."""
  d = _DEFAULTS
  p.add_argument("--mode", choices=MODES, default=mode_default,
                 help=f"spd: DMax soft parallel decoding; threshold: the official LLaDA2.0 generate() "
                      f"(default: {mode_default})")
  p.add_argument("--threshold", type=confidence, default=None,
                 help="commit confidence: SPD decodes the leftmost run of masked positions at or above it; "
                      f"threshold mode commits every masked position above it (default: {threshold_default})")
  p.add_argument("--converge-threshold", type=confidence, default=d.converge_threshold,
                 help="SPD: a block ends when every position it decodes is at least this confident "
                      f"(default {d.converge_threshold})")
  p.add_argument("--block-length", type=positive_int, default=d.block_length,
                 help=f"tokens per block (default {TRAINED_BLOCK_LENGTH}, the block length LLaDA2.0 and DMax are "
                      "trained with: another value works but warns, it changes the answers)")
  p.add_argument("--steps", type=positive_int, default=None,
                 help="threshold mode: steps per block (the block is split evenly over them); SPD: the step "
                      "cap per block (default: the block length)")
  p.add_argument("--gen-length", type=positive_int, default=gen_length_default,
                 help=f"tokens to generate after the prompt (default {gen_length_help or gen_length_default})")
  p.add_argument("--temperature", type=nonnegative_float, default=d.temperature,
                 help=f"0 = greedy; > 0 samples (Gumbel-max) (default {d.temperature})")
  p.add_argument("--mesh", default=None,
                 help="decode sharded over a device mesh, e.g. 'expert=4,tensor=2' (axes data, fsdp, expert, "
                      "tensor; parameters and KV cache placed by the project's logical-axis rules); default: "
                      "one device")


def mesh_from_flag(spec: str | None):
  """The `jax.sharding.Mesh` of --mesh, or None for one device."""
  if not spec:
    return None
  from dmax_jax import sharding
  try:
    return sharding.make_mesh(sharding.parse_mesh(spec))
  except InputError as e:
    raise InputError(f"--mesh {spec!r}: {e}") from None


def decode_options(args: argparse.Namespace, trace: bool = False, **defaults) -> DecodeOptions:
  """`DecodeOptions` from the flags; `defaults` fill flags left unset (None), e.g. a task's threshold."""
  if args.block_length != TRAINED_BLOCK_LENGTH:
    warn(f"--block-length {args.block_length}: models of this family are trained with blocks of "
         f"{TRAINED_BLOCK_LENGTH}; other lengths change the answers")
  given = {"threshold": args.threshold, "gen_length": args.gen_length}
  chosen = {k: defaults.get(k) if v is None else v for k, v in given.items()}
  return DecodeOptions(mode=args.mode, block_length=args.block_length, steps=args.steps,
                       converge_threshold=args.converge_threshold, temperature=args.temperature, trace=trace,
                       **{k: v for k, v in chosen.items() if v is not None})
