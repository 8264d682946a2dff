"""`python -m dmax_jax.experiments.tiny_dmax`: the whole tiny-DMax pipeline (see pipeline.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dmax_jax.experiments.tiny_dmax import pipeline


def parse_args(argv=None) -> tuple[pipeline.PipelineConfig, list[str], bool]:
  defaults = pipeline.PipelineConfig()
  p = argparse.ArgumentParser(
      prog="python -m dmax_jax.experiments.tiny_dmax", formatter_class=argparse.RawDescriptionHelpFormatter,
      description=pipeline.__doc__ + "\nOutputs: <run-dir>/{base,dmax}/ (HF checkpoints with tokenizer), "
      "<run-dir>/results/{results.md,accuracy_vs_tpf.png,points.json,headline.json}.")
  p.add_argument("--smoke", action="store_true",
                 help="a few steps of every stage on a handful of problems (CI; < 2 minutes); run dir "
                      f"{pipeline.SMOKE['run_dir']} unless --run-dir is given")
  p.add_argument("--run-dir", help=f"where everything is written (default {defaults.run_dir})")
  p.add_argument("--stages", default=",".join(pipeline.STAGES),
                 help=f"comma-separated subset of {','.join(pipeline.STAGES)}, run in that order (default: all)")
  p.add_argument("--force", action="store_true", help="rerun stages even if their .done.json marker exists")
  p.add_argument("--seed", type=int, help=f"task/data/init seed (default {defaults.seed})")
  p.add_argument("--base-steps", type=int, help=f"base-model SFT steps (default {defaults.base_steps})")
  p.add_argument("--dmax-steps", type=int, help=f"OPUT fine-tune steps (default {defaults.dmax_steps})")
  p.add_argument("--trajectory-prompts", type=int,
                 help=f"training prompts decoded by the base model for OPUT (default {defaults.trajectory_prompts})")
  p.add_argument("--test-problems", type=int, help=f"test problems per evaluation point (default {defaults.test_problems})")
  p.add_argument("--decode-batch", type=int, help=f"rows decoded at once (default {defaults.decode_batch})")
  args = p.parse_args(argv)
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  unknown = sorted(set(stages) - set(pipeline.STAGES))
  if unknown or not stages:
    p.error(f"--stages: unknown stage(s) {unknown}; choose from {','.join(pipeline.STAGES)}")
  changes = dict(pipeline.SMOKE) if args.smoke else {}
  for flag in ("run_dir", "seed", "base_steps", "dmax_steps", "trajectory_prompts", "test_problems", "decode_batch"):
    value = getattr(args, flag)
    if value is not None:
      if flag not in ("run_dir", "seed") and value <= 0:
        p.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
      changes[flag] = value
  return dataclasses.replace(defaults, **changes), [s for s in pipeline.STAGES if s in stages], args.force


def main(argv=None) -> int:
  pc, stages, force = parse_args(argv)
  summaries = pipeline.run(pc, stages, force)
  if "evaluate" in summaries:
    print(open(pc.path("results", "results.md")).read())
    for decoder, head in summaries["evaluate"]["headline"].items():
      if head["dmax"] is None:
        print(f"no {pipeline.DMAX} {decoder} point is within 2 accuracy points of the base model's best "
              f"({100 * head['base']['accuracy']:.1f}% at TPF {head['base']['tpf']:.2f})")
      else:
        print(f"base best: {100 * head['base']['accuracy']:.1f}% at TPF {head['base']['tpf']:.2f} "
              f"(threshold {head['base']['threshold']:g}); {pipeline.DMAX} {decoder}: "
              f"{100 * head['dmax']['accuracy']:.1f}% at TPF {head['dmax']['tpf']:.2f} "
              f"(threshold {head['dmax']['threshold']:g}): {head['tpf_ratio']:.2f}x TPF")
  return 0


if __name__ == "__main__":
  sys.exit(main())
