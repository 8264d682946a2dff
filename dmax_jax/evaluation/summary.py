"""Aggregates of an evaluation's samples: accuracy under every scorer (lenient: how many responses it dropped),
tokens per forward both as DMax prints it (mean of per-sample ratios) and as total tokens / total forwards,
and throughput; the Markdown table of one or more runs."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from dmax_jax.evaluation.tasks import Task


class Tally:
  """Running aggregates over samples (dicts as written to samples.jsonl)."""

  def __init__(self, task: Task, samples: Iterable[dict[str, Any]] = ()):
    self.task = task
    self.samples: list[dict[str, Any]] = []
    self.add(samples)

  def add(self, samples: Iterable[dict[str, Any]]) -> None:
    self.samples.extend(samples)

  def accuracy(self, metric: str) -> float:
    return sum(bool(s["scores"][metric]) for s in self.samples) / max(len(self.samples), 1)

  def tpf(self) -> tuple[float, float]:
    """(mean of per-sample ratios, ratio of sums)."""
    if not self.samples:
      return 0.0, 0.0
    ratios = [s["generated_tokens"] / s["nfe"] for s in self.samples]
    return (sum(ratios) / len(ratios),
            sum(s["generated_tokens"] for s in self.samples) / sum(s["nfe"] for s in self.samples))

  def postfix(self) -> str:
    if not self.samples:
      return ""
    return (f"{self.task.strict} {100 * self.accuracy(self.task.strict):.1f}% "
            f"{self.task.lenient} {100 * self.accuracy(self.task.lenient):.1f}% TPF {self.tpf()[0]:.2f}")

  def summary(self) -> dict[str, Any]:
    n = len(self.samples)
    metrics = sorted({m for s in self.samples for m in s["scores"]})
    mean_tpf, pooled_tpf = self.tpf()
    seconds = sum(s["seconds"] for s in self.samples)
    tokens = sum(s["generated_tokens"] for s in self.samples)
    forwards = sum(s["nfe"] for s in self.samples)
    return {
        "task": self.task.name, "n": n,
        "accuracy": {m: self.accuracy(m) for m in metrics},
        "strict": {"metric": self.task.strict, "accuracy": self.accuracy(self.task.strict)},
        "lenient": {"metric": self.task.lenient, "accuracy": self.accuracy(self.task.lenient),
                    "dropped": sum(s["scores"][self.task.lenient] is None for s in self.samples)},
        "tpf_mean_of_ratios": mean_tpf, "tpf_ratio_of_sums": pooled_tpf,
        "mean_nfe": forwards / max(n, 1), "mean_generated_tokens": tokens / max(n, 1),
        "decode_seconds": seconds, "tokens_per_second": tokens / seconds if seconds else None,
    }


def markdown(results: Sequence[dict[str, Any]]) -> str:
  """One row per result (a `Tally.summary()` plus checkpoint and options)."""
  lines = ["| task | checkpoint | decoder | threshold | n | strict (%) | lenient (%) | dropped | TPF (mean) | "
           "TPF (sum/sum) | mean NFE | tokens/s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    options = r.get("options", {})
    speed = f"{r['tokens_per_second']:.1f}" if r["tokens_per_second"] else "-"
    checkpoint = os.path.basename(os.path.normpath(r.get("checkpoint", "-")))
    lines.append(
        f"| {r['task']} | {checkpoint} | {options.get('mode', '-')} | {r.get('threshold', '-')} | {r['n']} | "
        f"{100 * r['strict']['accuracy']:.1f} ({r['strict']['metric']}) | "
        f"{100 * r['lenient']['accuracy']:.1f} | {r['lenient']['dropped']} | {r['tpf_mean_of_ratios']:.2f} | "
        f"{r['tpf_ratio_of_sums']:.2f} | {r['mean_nfe']:.1f} | {speed} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
  """`python -m dmax_jax.evaluation.summary DIR_OR_RESULTS_JSON...`: one Markdown table of several runs."""
  import json

  from dmax_jax.errors import InputError
  if not argv:
    raise InputError("usage: python -m dmax_jax.evaluation.summary RUN_DIR_OR_results.json ...")
  results = []
  for path in argv:
    with open(os.path.join(path, "results.json") if os.path.isdir(path) else path) as f:
      try:
        results.append(json.load(f))
      except json.JSONDecodeError as e:
        raise InputError(f"{f.name} is not JSON ({e.msg})") from None
  print(markdown(results), end="")
  return 0


if __name__ == "__main__":
  from dmax_jax.cli.policy import command
  raise SystemExit(command(main)())
