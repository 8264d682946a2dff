"""Fine-tunes a LLaDA2 model into a DMax model with On-Policy Uniform Training.

  python train.py --config configs/tiny_oput.yaml
  python train.py --config configs/llada2_mini_oput.yaml --set train.max_steps=100

Resumes automatically from the latest checkpoint in the checkpoint dir (the same run: a config that changes
the objective or the data order is refused). SIGTERM or Ctrl-C finish the current step, save a checkpoint
and exit with 128 + the signal number; a second signal aborts. Multi-host (Cloud TPU pod):
run the same command on every worker with --multihost (see docs/tpu_pod.md).
"""

import argparse
import logging
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="YAML run config with model/data/train/mesh/checkpoint sections")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                 help="override one config value (parsed as YAML, e.g. --set train.max_steps=10); repeatable")
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() with auto-detection (Cloud TPU pod slices)")
  p.add_argument("--coordinator-address", default=None,
                 help="host:port of process 0 for an explicit multi-process launch (with the next two flags)")
  p.add_argument("--num-processes", type=int, default=None, help="number of processes (explicit launch)")
  p.add_argument("--process-id", type=int, default=None, help="this process's index (explicit launch)")
  p.add_argument("--allow-config-change", action="store_true",
                 help="resume although keys that change neither objective nor data order (max_steps, logging, "
                      "checkpoint cadence, mesh, ...) differ from the stored run config")
  p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
  p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then exit")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from dmax_jax.config import ConfigError
  from dmax_jax.training.run_config import load_run_config
  try:
    cfg = load_run_config(args.config, args.overrides)
  except (ConfigError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    print(cfg.dump())
    return 0
  from dmax_jax.training import trainer
  trainer.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id, args.multihost)
  try:
    summary = trainer.run(cfg, progress=not args.no_progress, allow_config_change=args.allow_config_change)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{summary.status}: step {summary.final_step}/{summary.total_steps}, last metrics {summary.last_metrics}")
  if summary.status == "interrupted":
    return summary.signal_exit_code
  return 0 if summary.status == "finished" else 1


if __name__ == "__main__":
  sys.exit(main())
