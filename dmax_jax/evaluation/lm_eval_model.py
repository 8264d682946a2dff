"""An lm-evaluation-harness model backed by the compiled decoder, so lm-eval's own tasks and YAMLs (DMax's
`dInfer/evaluations/tasks` included) run on this project (`pip install 'dmax-jax[eval]'`; no torch):

  lm_eval --model dmax_jax --model_args ckpt=CKPT,threshold=0.5,batch_size=8 --tasks gsm8k \\
      --apply_chat_template --include_path DMAX/dInfer/evaluations/tasks      # with `import dmax_jax.evaluation.lm_eval_model`

or from Python: `lm_eval.simple_evaluate(model=DMaxLM(ckpt=...), tasks=[...], apply_chat_template=True)`.

`generate_until` batches requests into the decoder (one compiled program per prompt bucket), returns the
response as `evaluate.py` does (dInfer's convention) cut at the request's `until` strings, and counts forwards
and tokens: `tpf()` gives DMax's TPF (lm-eval reports accuracy only). Diffusion decoding scores generation
tasks; log-likelihood requests are refused.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from dmax_jax.decoding import DecodeOptions
from dmax_jax.evaluation.runner import Model, decode_batch, response_ids


def cut_at(text: str, until: list[str]) -> str:
  """`text` up to the first occurrence of any stop string."""
  return text[:min([text.find(s) for s in until if s and s in text], default=len(text))]


@register_model("dmax_jax")
class DMaxLM(LM):
  """lm-eval model over a checkpoint; `model_args` are `ckpt`, `batch_size` and any `DecodeOptions` field
  (lm-eval's own `device` / `max_batch_size` are accepted and ignored: JAX places the model)."""

  def __init__(self, ckpt: str, batch_size: int | str = 1, device: Any = None, max_batch_size: Any = None,
               **options: Any):
    super().__init__()
    from dmax_jax import load_model
    from dmax_jax.tokenization import load_tokenizer
    self.options = DecodeOptions(**options)
    self.batch_size = int(batch_size)
    config, variables = load_model(ckpt, scan_layers=False)
    self.model = Model(config, variables, load_tokenizer(ckpt), ckpt)
    self.forwards = self.tokens = 0

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
    eos_id, _ = self.options.special_ids(self.model.config)
    texts = []
    for start in tqdm(range(0, len(prompts), self.batch_size), disable=disable_tqdm, desc="dmax_jax"):
      rows, _, _ = decode_batch(self.model, prompts[start:start + self.batch_size], self.options, self.batch_size)
      for request, row in zip(requests[start:start + self.batch_size], rows):
        self.forwards += row.nfe
        self.tokens += row.num_tokens
        text = self.model.tokenizer.decode(response_ids(row, self.options, eos_id), skip_special_tokens=True)
        texts.append(cut_at(text, list(request.args[1].get("until") or [])))
    return texts

  def tpf(self) -> float:
    """Generated tokens per forward over every request so far (total / total)."""
    return self.tokens / max(self.forwards, 1)

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    raise NotImplementedError("dmax_jax evaluates generation tasks (generate_until) only")

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    raise NotImplementedError("dmax_jax evaluates generation tasks (generate_until) only")

