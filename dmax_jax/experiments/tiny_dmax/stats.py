"""Task statistics: split sizes and overlap, token lengths, a sample with three solutions, tokenizer round
trip, generation speed, model size.

    python -m dmax_jax.experiments.tiny_dmax.stats [--train 20000 --validation 500 --test 500 --seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dmax_jax.experiments.tiny_dmax import model_config, task, tokenizer


def _percentiles(values: list[int]) -> str:
  a = np.asarray(values)
  p5, p50, p95 = np.percentile(a, [5, 50, 95])
  return f"min {a.min()}, p5 {p5:.0f}, median {p50:.0f}, mean {a.mean():.1f}, p95 {p95:.0f}, max {a.max()}"


def report(sizes: dict[str, int], seed: int = 0, cfg: task.TaskConfig = task.TaskConfig()) -> str:
  """A Markdown report of the task as generated with `sizes` and `seed`."""
  lines = []
  start = time.perf_counter()
  splits = task.make_splits(sizes, seed, cfg)
  gen_seconds = time.perf_counter() - start
  n_total = sum(len(ps) for ps in splits.values())
  keys = {name: {p.key for p in ps} for name, ps in splits.items()}
  lines.append("## Splits")
  for name, ps in splits.items():
    lines.append(f"- {name}: {len(ps)} problems, {len(keys[name])} distinct")
  for i, a in enumerate(keys):
    for b in list(keys)[i + 1:]:
      lines.append(f"- overlap {a} / {b}: {len(keys[a] & keys[b])}")
  lines.append(f"- generation: {n_total} problems in {gen_seconds:.2f} s "
               f"({n_total / gen_seconds:,.0f} problems/s incl. hash-split rejection)")

  tok = tokenizer.build_tokenizer()
  start = time.perf_counter()
  train = splits.get("train") or next(iter(splits.values()))
  solutions = [task.solution_for(p, seed, cfg) for p in train]
  sol_seconds = time.perf_counter() - start
  lines.append(f"- worked solutions: {len(solutions)} in {sol_seconds:.2f} s")

  prompt_lens = [len(tok.encode(tokenizer.render_prompt(p.prompt)).ids) for p in train]
  answer_lens = [len(tok.encode(s).ids) + 1 for s in solutions]  # + EOS
  lines += ["", f"## Token lengths (train, {len(train)} problems, vocabulary {tok.get_vocab_size()})",
            f"- prompt (chat-templated): {_percentiles(prompt_lens)}",
            f"- answer (+ EOS): {_percentiles(answer_lens)}",
            f"- prompt + answer: {_percentiles([a + b for a, b in zip(prompt_lens, answer_lens)])}"]
  n_events = np.bincount([len(p.events) for p in train])
  lines.append("- events per problem: " + ", ".join(f"{k}: {c}" for k, c in enumerate(n_events) if c))

  round_trip = sum(tok.decode(tok.encode(t).ids) == t for t in solutions + [p.prompt for p in train])
  unknown = sum(tokenizer.UNK_TOKEN in tok.encode(t).tokens for t in solutions)
  lines += ["", "## Tokenizer", f"- exact round trips: {round_trip} / {2 * len(train)}; texts with unknown "
            f"tokens: {unknown}", f"- special ids: {tokenizer.special_ids(tok)}"]

  sample = train[0]
  lines += ["", "## Sample problem", f"Prompt: {sample.prompt}", ""]
  lines += [f"{i + 1}. {s}" for i, s in enumerate(task.solution_variants(sample, 3, seed, cfg))]
  lines.append("")
  lines.append("Tokens: `" + "|".join(tok.encode(task.solution_for(sample, seed, cfg)).tokens) + "`")

  mcfg = model_config.tiny_model_config(tok.get_vocab_size(), **tokenizer.special_ids(tok))
  counts = model_config.parameter_summary(mcfg)
  lines += ["", "## Tiny model", f"- {counts['total']:,} parameters, {counts['active']:,} active per token "
            f"(hidden {mcfg.hidden_size}, {mcfg.num_hidden_layers} layers, {mcfg.num_experts} experts, "
            f"vocab {mcfg.vocab_size})"]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--train", type=int, default=20000, help="train split size (default 20000)")
  parser.add_argument("--validation", type=int, default=500, help="validation split size (default 500)")
  parser.add_argument("--test", type=int, default=500, help="test split size (default 500)")
  parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
  args = parser.parse_args(argv)
  sizes = {"train": args.train, "validation": args.validation, "test": args.test}
  if min(sizes.values()) < 1:
    parser.error("every split size must be >= 1")
  print(report(sizes, args.seed), end="")


if __name__ == "__main__":
  main()
