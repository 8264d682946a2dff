"""Loading a checkpoint's Hugging Face tokenizer and applying its chat template, as token ids."""

from __future__ import annotations

import os
from typing import Any, Sequence


def load_tokenizer(path: str):
  """The `PreTrainedTokenizerFast` saved in directory `path`, or None when it has no `tokenizer.json`.

  Not `AutoTokenizer`: it reads the checkpoint's config.json, whose `auto_map` asks to run remote code.
  """
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    return None
  from transformers import PreTrainedTokenizerFast
  return PreTrainedTokenizerFast.from_pretrained(path)


def chat_ids(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
  """Token ids of `messages` (`[{"role", "content"}, ...]`) rendered by the tokenizer's chat template."""
  ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
