"""A word-level tokenizer for the tiny task, built with `tokenizers` and saved for `transformers.AutoTokenizer`.

Pieces are words, numbers and punctuation marks, each with its leading space attached (" apples",
" 16", "2", "."), and `decode(encode(text)) == text` exactly (the decoder concatenates pieces). Numbers
are cut into chunks of up to `number_chunk` digits (default 2: every number 0..99 of the task is one
token, so `8 + 14 = 22` is a lookup of one two-argument fact; larger numbers split, e.g. " 10" "5"; 1
spells them digit by digit). The vocabulary is the special tokens followed by every piece the task can
produce and every digit string of up to `number_chunk` digits, sorted: a few hundred entries. As in
LLaDA2, padding is the EOS token.

Chat format: `<|user|>{question}<|assistant|>{answer}<|endoftext|>`; with `add_generation_prompt=True`
the prompt ends with `<|assistant|>`, so a rendered prompt is a prefix of the rendered conversation.
"""

from __future__ import annotations

import json
import os
import random
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from dmax_jax.experiments.tiny_dmax import task
from dmax_jax.io import write_text_atomic

EOS_TOKEN = "<|endoftext|>"  # also the pad token
MASK_TOKEN = "<|mask|>"
UNK_TOKEN = "<|unk|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN, UNK_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

NUMBER_CHUNK = 2

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}" + SYSTEM_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}" + USER_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT_TOKEN + "{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT_TOKEN + "{%- endif -%}"
)


def _pre_tokenizer(number_chunk: int) -> pre_tokenizers.PreTokenizer:
  pattern = r" ?[A-Za-z]+| ?[0-9]{1,%d}| ?[^A-Za-z0-9 ]" % number_chunk
  return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


def task_corpus(seed: int = 0, n_problems: int = 3000, cfg: task.TaskConfig = task.TaskConfig()) -> Iterable[str]:
  """Prompts and solution variants of problems from every split (covers every template wording)."""
  rng = random.Random(f"corpus:{seed}")
  for _ in range(n_problems):
    p = task.random_problem(rng, cfg)
    yield p.prompt
    for strategy in task.STRATEGIES:
      try:
        yield task.sample_solution(p, rng, cfg, strategy=strategy)
      except ValueError:  # gains_losses does not apply to every problem
        pass


def build_tokenizer(texts: Iterable[str] | None = None, number_chunk: int = NUMBER_CHUNK) -> Tokenizer:
  """A WordLevel tokenizer whose vocabulary is SPECIAL_TOKENS + every piece of `texts` (default: the task
  corpus) + every string of 1..`number_chunk` digits with and without a leading space, sorted."""
  if not 1 <= number_chunk <= 3:
    raise ValueError(f"number_chunk must be 1, 2 or 3, got {number_chunk}")
  pre = _pre_tokenizer(number_chunk)
  digit_strings = [str(i).zfill(n) for n in range(1, number_chunk + 1) for i in range(10 ** n)]
  pieces = {d for s in digit_strings for d in (s, " " + s)}
  for text in (task_corpus() if texts is None else texts):
    pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
  vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + sorted(pieces))}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
  tok.pre_tokenizer = pre
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
  """Ids a model config needs: eos (= pad) and mask."""
  eos = tok.token_to_id(EOS_TOKEN)
  return {"eos_token_id": eos, "pad_token_id": eos, "mask_token_id": tok.token_to_id(MASK_TOKEN)}


def tokenizer_config(model_max_length: int = 512) -> dict:
  """`tokenizer_config.json` contents: special tokens, chat template, no space clean-up."""
  return {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": None,
      "eos_token": EOS_TOKEN,
      "pad_token": EOS_TOKEN,
      "unk_token": UNK_TOKEN,
      "mask_token": MASK_TOKEN,
      "additional_special_tokens": [SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
      "clean_up_tokenization_spaces": False,
      "model_max_length": model_max_length,
      "padding_side": "right",
      "chat_template": CHAT_TEMPLATE,
  }


def save_tokenizer(tok: Tokenizer, directory: str, model_max_length: int = 512) -> None:
  """Writes `tokenizer.json` and `tokenizer_config.json` (each atomically) into `directory`."""
  write_text_atomic(os.path.join(directory, "tokenizer.json"), tok.to_str(pretty=True))
  write_text_atomic(os.path.join(directory, "tokenizer_config.json"),
                json.dumps(tokenizer_config(model_max_length), indent=2) + "\n")


def render_prompt(question: str) -> str:
  """The chat-templated generation prompt (what `apply_chat_template(..., add_generation_prompt=True)` gives)."""
  return f"{USER_TOKEN}{question}{ASSISTANT_TOKEN}"
