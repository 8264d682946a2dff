"""Loading a checkpoint's Hugging Face tokenizer and applying its chat template, as token ids."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence


def load_tokenizer(path: str):
  """The `PreTrainedTokenizerFast` saved in directory `path`, or None when it has no `tokenizer.json`.

  Not `AutoTokenizer`: it reads the checkpoint's config.json, whose `auto_map` asks to run remote code.
  Quiet: transformers' advice that PyTorch is missing does not concern this project (it needs no torch),
  and prompt lengths are checked against the model's positions by the decoder, not by the tokenizer.
  """
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    return None
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  from transformers import PreTrainedTokenizerFast
  return PreTrainedTokenizerFast.from_pretrained(path, model_max_length=sys.maxsize)


def chat_ids(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
  """Token ids of `messages` (`[{"role", "content"}, ...]`) rendered by the tokenizer's chat template."""
  ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def unknown_words(tokenizer: Any, text: str) -> list[str]:
  """The distinct pieces of `text` that the tokenizer maps to its unknown token, in order of appearance."""
  if tokenizer.unk_token_id is None:
    return []
  encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  pieces = (text[start:end].strip() for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
            if token == tokenizer.unk_token_id)
  return list(dict.fromkeys(pieces))
