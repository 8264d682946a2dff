"""Compiled block-diffusion decoding: DMax soft parallel decoding and LLaDA2.0 threshold decoding."""

from dmax_jax.decoding.generate import DecodeOutput, Trace, decode_padded, max_length, row_keys
from dmax_jax.decoding.options import DecodeOptions, prompt_bucket, validate_prompts
from dmax_jax.decoding.results import RowResult, generate, pad_prompts, unpack

__all__ = ["DecodeOptions", "DecodeOutput", "RowResult", "Trace", "decode_padded", "generate", "max_length",
           "pad_prompts", "prompt_bucket", "row_keys", "unpack", "validate_prompts"]
