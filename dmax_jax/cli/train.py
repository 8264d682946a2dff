"""Fine-tunes a LLaDA2 model into a DMax model with On-Policy Uniform Training.

  python train.py --config configs/tiny_oput.yaml          (or: dmax-train --config ...)
  python train.py --config configs/llada2_mini_oput.yaml --set train.max_steps=100

Resumes automatically from the latest checkpoint in the checkpoint dir (the same run: a config that changes
the objective or the data order is refused). SIGTERM or Ctrl-C finish the current step, save a checkpoint
and exit with 128 + the signal number; a second signal aborts. Multi-host (Cloud TPU pod):
run the same command on every worker with --multihost (see docs/tpu_pod.md).
Bad input (config, data, checkpoint, mesh) is one `error:` line and exit status 2 (`--debug` for the traceback).
"""

import logging

from dmax_jax.cli.policy import Parser, command, nonnegative_int, positive_int


def parse_args(argv):
  p = Parser(description=__doc__)
  p.add_argument("--config", required=True, help="YAML run config with model/data/train/mesh/checkpoint sections")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                 help="override one config value (parsed as YAML, e.g. --set train.max_steps=10); repeatable")
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() with auto-detection (Cloud TPU pod slices)")
  p.add_argument("--coordinator-address", default=None,
                 help="host:port of process 0 for an explicit multi-process launch (with the next two flags)")
  p.add_argument("--num-processes", type=positive_int, default=None, help="number of processes (explicit launch)")
  p.add_argument("--process-id", type=nonnegative_int, default=None, help="this process's index (explicit launch)")
  p.add_argument("--allow-config-change", action="store_true",
                 help="resume although keys that change neither objective nor data order (max_steps, logging, "
                      "checkpoint cadence, mesh, ...) differ from the stored run config")
  p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
  p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then exit")
  args = p.parse_args(argv)
  if args.process_id is not None and args.num_processes is not None and args.process_id >= args.num_processes:
    p.error(f"argument --process-id: must be < --num-processes ({args.num_processes}), got {args.process_id}")
  return args


@command
def main(argv) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from dmax_jax.training.run_config import load_run_config
  cfg = load_run_config(args.config, args.overrides)
  if args.dry_run:
    print(cfg.dump())
    return 0
  from dmax_jax.training import trainer
  trainer.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id, args.multihost)
  summary = trainer.run(cfg, progress=not args.no_progress, allow_config_change=args.allow_config_change)
  print(f"{summary.status}: step {summary.final_step}/{summary.total_steps}, last metrics {summary.last_metrics}")
  if summary.status == "interrupted":
    return summary.signal_exit_code
  return 0 if summary.status == "finished" else 1

