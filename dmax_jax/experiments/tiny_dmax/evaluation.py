"""Scoring decoded answers, aggregating tokens per forward (TPF), and the result table and plot.

One `EvalPoint` is one (model, decoder, threshold) run over the test split. TPF follows DMax/dInfer:
generated non-EOS tokens divided by forwards (the prefill counted once), aggregated over the split as
total tokens / total forwards (`tpf`); the mean of the per-row ratios is kept too (`mean_row_tpf`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from dmax_jax.experiments.tiny_dmax import task
from dmax_jax.io import write_text_atomic


@dataclasses.dataclass(frozen=True)
class EvalPoint:
  model: str
  decoder: str
  threshold: float
  n: int
  accuracy: float       # fraction of rows whose "The answer is N" is correct
  tpf: float            # total generated tokens / total forwards
  mean_row_tpf: float   # mean over rows of tokens / forwards
  mean_tokens: float
  mean_nfe: float
  seconds: float | None = None  # wall time of the decoding run, if measured

  @property
  def curve(self) -> tuple[str, str]:
    return self.model, self.decoder


def evaluate(model: str, decoder: str, threshold: float, problems: Sequence[task.Problem], texts: Sequence[str],
             tokens: Sequence[int], nfe: Sequence[int], seconds: float | None = None) -> EvalPoint:
  """Scores one decoding run: `texts[i]` is the decoded answer of `problems[i]`, produced with `tokens[i]`
  generated (non-EOS) tokens in `nfe[i]` forwards."""
  n = len(problems)
  if not n or not len(texts) == len(tokens) == len(nfe) == n:
    raise ValueError(f"need equally many (> 0) problems, texts, tokens and nfe; got "
                     f"{n}, {len(texts)}, {len(tokens)}, {len(nfe)}")
  if min(nfe) <= 0:
    raise ValueError("every row needs at least one forward")
  correct = sum(task.is_correct(t, p.answer) for p, t in zip(problems, texts))
  return EvalPoint(model=model, decoder=decoder, threshold=float(threshold), n=n, accuracy=correct / n,
                   tpf=sum(tokens) / sum(nfe), mean_row_tpf=sum(t / f for t, f in zip(tokens, nfe)) / n,
                   mean_tokens=sum(tokens) / n, mean_nfe=sum(nfe) / n, seconds=seconds)


def _sorted(points: Sequence[EvalPoint]) -> list[EvalPoint]:
  order = list(dict.fromkeys(p.curve for p in points))  # curves in first-seen order
  return sorted(points, key=lambda p: (order.index(p.curve), -p.threshold))


def markdown_table(points: Sequence[EvalPoint]) -> str:
  """A Markdown table, one row per point, grouped by curve, thresholds descending."""
  lines = ["| model | decoder | threshold | accuracy (%) | TPF | mean tokens | mean NFE | n |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
  for p in _sorted(points):
    lines.append(f"| {p.model} | {p.decoder} | {p.threshold:g} | {100 * p.accuracy:.1f} | {p.tpf:.2f} | "
                 f"{p.mean_tokens:.1f} | {p.mean_nfe:.1f} | {p.n} |")
  return "\n".join(lines) + "\n"


def write_markdown(path: str, points: Sequence[EvalPoint]) -> str:
  return write_text_atomic(path, markdown_table(points))


def headline(points: Sequence[EvalPoint], base: tuple[str, str], dmax: tuple[str, str],
             tolerance: float = 0.02) -> dict:
  """The paper's claim in numbers: the base curve's most accurate point (highest TPF among ties) against
  the fastest point of the DMax curve whose accuracy is within `tolerance` of it."""
  base_pts = [p for p in points if p.curve == base]
  dmax_pts = [p for p in points if p.curve == dmax]
  if not base_pts or not dmax_pts:
    raise ValueError(f"need points of both curves {base} and {dmax}")
  best = max(base_pts, key=lambda p: (p.accuracy, p.tpf))
  close = [p for p in dmax_pts if p.accuracy >= best.accuracy - tolerance]
  fast = max(close, key=lambda p: p.tpf) if close else None
  return {"base": dataclasses.asdict(best), "dmax": dataclasses.asdict(fast) if fast else None,
          "tpf_ratio": fast.tpf / best.tpf if fast else None,
          "accuracy_drop": best.accuracy - fast.accuracy if fast else None}


def plot_accuracy_vs_tpf(points: Sequence[EvalPoint], path: str, title: str = "tiny-DMax: accuracy vs TPF") -> str:
  """Writes a PNG (Agg backend) with one accuracy-vs-TPF curve per (model, decoder), thresholds annotated."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  curves: dict[tuple[str, str], list[EvalPoint]] = {}
  for p in _sorted(points):
    curves.setdefault(p.curve, []).append(p)
  for (model, decoder), pts in curves.items():
    pts = sorted(pts, key=lambda p: p.tpf)
    xs, ys = [p.tpf for p in pts], [100 * p.accuracy for p in pts]
    ax.plot(xs, ys, marker="o", label=f"{model} + {decoder}")
    for p, x, y in zip(pts, xs, ys):
      ax.annotate(f"{p.threshold:g}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
  ax.set_xlabel("tokens per forward (TPF)")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, format="png")
  plt.close(fig)
  os.replace(tmp, path)
  return path


def save_points(path: str, points: Sequence[EvalPoint]) -> str:
  return write_text_atomic(path, json.dumps([dataclasses.asdict(p) for p in points], indent=1) + "\n")


def load_points(path: str) -> list[EvalPoint]:
  with open(path) as f:
    return [EvalPoint(**d) for d in json.load(f)]
