"""An lm-evaluation-harness model backed by the compiled decoder, so lm-eval's own tasks and YAMLs (DMax's
`dInfer/evaluations/tasks` included) run on this project (`pip install 'dmax-jax[eval]'`; no torch), from
Python: `lm_eval.simple_evaluate(model=DMaxLM(ckpt=...), tasks=[...], apply_chat_template=True)` (importing
this module also registers the name `dmax_jax` for `lm_eval.simple_evaluate(model="dmax_jax", ...)`).

`generate_until` batches requests into the decoder (one compiled program per prompt bucket) and returns the
response as `evaluate.py` does (dInfer's convention: every generated token but EOS), cut at the request's
`until` strings when `cut_until` (lm-eval's convention for its own models; dInfer does not cut). It counts
forwards and tokens: `tpf()` gives both of DMax's TPF numbers (lm-eval reports accuracy only). Diffusion
decoding scores generation tasks; log-likelihood requests are refused.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from dmax_jax.decoding import DecodeOptions
from dmax_jax.evaluation.runner import BATCHES_PER_CALL, Model, decode_batch, response_text
from dmax_jax.evaluation.tasks import PAPER_GEN_LENGTH


def cut_at(text: str, until: str | list[str] | None) -> str:
  """`text` up to the first occurrence of any stop string (a string is one stop string)."""
  stops = [until] if isinstance(until, str) else list(until or [])
  return text[:min([text.find(s) for s in stops if s and s in text], default=len(text))]


@register_model("dmax_jax")
class DMaxLM(LM):
  """lm-eval model over a checkpoint; `model_args` are `ckpt`, `batch_size`, `cut_until` and any `DecodeOptions`
  field (default gen_length: the paper's 2048). lm-eval's own `device` / `max_batch_size` are accepted and
  ignored: JAX places the model."""

  def __init__(self, ckpt: str, batch_size: int = 1, cut_until: bool = True, device: Any = None,
               max_batch_size: Any = None, **options: Any):
    super().__init__()
    from dmax_jax import load_model
    from dmax_jax.errors import InputError
    from dmax_jax.tokenization import load_tokenizer
    if not isinstance(batch_size, int) or batch_size < 1:
      raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    self.options = DecodeOptions(**{"gen_length": PAPER_GEN_LENGTH, **options})
    self.batch_size, self.cut_until = batch_size, cut_until
    tokenizer = load_tokenizer(ckpt)
    if tokenizer is None:
      raise InputError(f"{ckpt} has no tokenizer")
    config, variables = load_model(ckpt, scan_layers=False)
    self.model = Model(config, variables, tokenizer, ckpt)
    self.counts: list[tuple[int, int]] = []  # (generated tokens, forwards) per request

  @property
  def tokenizer_name(self) -> str:
    return self.model.path

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return self.model.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    return self.model.tokenizer.chat_template

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    contexts = [r.args[0] for r in requests]
    prompts = [self.model.tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    texts = []
    per_call = self.batch_size * BATCHES_PER_CALL
    for start in tqdm(range(0, len(prompts), per_call), disable=disable_tqdm, desc="dmax_jax"):
      rows, _, _ = decode_batch(self.model, prompts[start:start + per_call], self.options, self.batch_size,
                                range(start, min(start + per_call, len(prompts))), queue_length=per_call)
      for request, row in zip(requests[start:start + per_call], rows):
        self.counts.append((row.num_tokens, row.nfe))
        text = response_text(self.model, row, self.options)
        texts.append(cut_at(text, request.args[1].get("until")) if self.cut_until else text)
    return texts

  def tpf(self) -> tuple[float, float]:
    """Tokens per forward over every request so far: (mean of per-request ratios, total / total)."""
    if not self.counts:
      return 0.0, 0.0
    return (sum(t / f for t, f in self.counts) / len(self.counts),
            sum(t for t, _ in self.counts) / sum(f for _, f in self.counts))

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    raise NotImplementedError("dmax_jax evaluates generation tasks (generate_until) only")

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    raise NotImplementedError("dmax_jax evaluates generation tasks (generate_until) only")

