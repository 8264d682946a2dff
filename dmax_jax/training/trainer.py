"""The OPUT training run: mesh, model, data, optimizer, sharded step, checkpoints, logging, export.

The loop dispatches step s+1 before reading step s's metrics to the host, so the device never waits
for logging; a step's metrics are always checked (finite loss and grad-norm) before its state is saved,
so a NaN/Inf stops the run with the last good checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import flax.linen as nn
import jax
from tqdm import tqdm

from dmax_jax import sharding
from dmax_jax.checkpoint.convert import variables_to_hf
from dmax_jax.config import ConfigError, ModelConfig
from dmax_jax.loading import load_model
from dmax_jax.model import init_variables, variable_shardings
from dmax_jax.training import checkpointing, preemption, run_record
from dmax_jax.training.data import JsonlSource, make_dataset
from dmax_jax.training.metrics import MetricsWriter
from dmax_jax.training.run_config import RunConfig
from dmax_jax.training.step import global_batch, init_state, make_train_step



class NonFiniteLoss(RuntimeError):
  """A step produced a NaN/Inf loss or gradient norm."""


@dataclasses.dataclass
class RunSummary:
  status: str  # "finished" | "nonfinite" | "interrupted"
  start_step: int
  final_step: int
  total_steps: int
  last_metrics: dict[str, float]
  checkpoint_dir: str
  export_dir: str | None = None
  signal_exit_code: int | None = None  # 128 + signal number when a signal stopped the run


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> None:
  """`jax.distributed.initialize` for multi-process runs: explicit coordinator/process ids, or `auto`
  (Cloud TPU pod slices detect everything themselves). Nothing to do for one process."""
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ConfigError("--coordinator-address needs --num-processes and --process-id")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto:
    jax.distributed.initialize()


def model_config(cfg: RunConfig) -> ModelConfig:
  m = cfg.model
  return ModelConfig.from_json(m.path or m.config, param_dtype=m.param_dtype, dtype=m.dtype,
                               remat_policy=m.remat_policy, moe_impl=m.moe_impl, parallelism=m.parallelism)


def initial_variables(cfg: RunConfig, model_cfg: ModelConfig, mesh) -> dict:
  """The starting weights, created directly with their shardings: a checkpoint or a random init."""
  m = cfg.model
  if m.path is not None:
    _, variables = load_model(m.path, dtype=m.param_dtype, mesh=mesh, parallelism=m.parallelism)
    return variables
  init = jax.jit(lambda key: nn.unbox(init_variables(model_cfg, key)),
                 out_shardings=variable_shardings(model_cfg, mesh))
  return init(jax.random.key(m.init_seed))


def check_batching(cfg: RunConfig, mesh) -> None:
  t = cfg.train
  rows_axis = mesh.shape["data"] * mesh.shape["fsdp"]
  processes = jax.process_count()
  if t.micro_batch % rows_axis:
    raise ConfigError(f"train.micro_batch_size ({t.micro_batch}) must be a multiple of mesh data*fsdp "
                      f"({rows_axis}): rows are split over those axes")
  if t.micro_batch % processes:
    raise ConfigError(f"train.micro_batch_size ({t.micro_batch}) must be a multiple of the number of "
                      f"processes ({processes})")


def total_steps(cfg: RunConfig, num_rows: int) -> int:
  steps = num_rows // cfg.train.global_batch_size * cfg.train.epochs
  if cfg.train.max_steps is not None:
    steps = min(steps, cfg.train.max_steps)
  if steps <= 0:
    raise ConfigError(f"{cfg.data.train_path} has {num_rows} rows, fewer than one global batch "
                      f"({cfg.train.global_batch_size})")
  return steps


def run(cfg: RunConfig, progress: bool = True, echo: Callable[[str], None] = print,
        allow_config_change: bool = False) -> RunSummary:
  """Trains according to `cfg`; resumes from the latest checkpoint in the checkpoint dir if any (refusing
  a config that differs from the stored one, see `run_record`). SIGTERM/SIGINT end the run after the
  current step with a checkpoint (status "interrupted", `RunSummary.signal_exit_code`)."""
  is_main = jax.process_index() == 0
  if cfg.train.export_hf and jax.process_count() > 1:
    raise ConfigError("train.export_hf works in single-process runs; export a restored checkpoint instead")
  if is_main:
    echo("resolved config:\n" + cfg.dump())
  mesh = sharding.make_mesh(cfg.mesh.shape())
  check_batching(cfg, mesh)
  model_cfg = model_config(cfg)
  if model_cfg.eos_token_id is None:
    raise ConfigError("the model config has no eos_token_id (used as the padding token)")
  steps = total_steps(cfg, len(JsonlSource(cfg.data.train_path)))
  train_step, tx, abstract = make_train_step(model_cfg, cfg.train, steps, mesh)
  accumulation = cfg.train.accumulation_steps
  dataset = make_dataset(cfg.data, rows_per_process=cfg.train.global_batch_size // jax.process_count(),
                         epochs=cfg.train.epochs, eos_id=model_cfg.eos_token_id,
                         mask_id=model_cfg.mask_token_id, process_index=jax.process_index(),
                         process_count=jax.process_count())
  data_iter = iter(dataset)
  manager = checkpointing.make_manager(cfg.checkpoint_dir, cfg.checkpoint.every_steps, cfg.checkpoint.keep,
                                       cfg.checkpoint.async_save)
  tokens_per_step = cfg.train.global_batch_size * cfg.data.max_seq_len
  latest = manager.latest_step() if cfg.checkpoint.resume else None
  if latest is not None:
    try:
      run_record.check_resume(cfg, allow_config_change)
    except ConfigError:
      manager.close()
      raise
  if is_main:
    run_record.record(cfg)
  writer = MetricsWriter(cfg.train.output_dir, cfg.train.tensorboard, enabled=is_main, start_step=latest or 0)
  if latest is None:
    variables = initial_variables(cfg, model_cfg, mesh)  # outside use_mesh: loading traces abstract shapes
  with sharding.use_mesh(mesh, model_cfg.parallelism):
    if latest is not None:
      state = checkpointing.restore(manager, latest, abstract, data_iter)
      start = latest
      if is_main:
        echo(f"resumed from {cfg.checkpoint_dir} step {latest}")
    else:
      state = init_state(variables, tx, abstract)
      del variables
      start = 0
    bar = tqdm(total=steps, initial=start, desc="oput", unit="step", disable=not (progress and is_main))
    clock = {"t": time.perf_counter()}
    last: dict[str, float] = {}

    def report(step: int, metrics: Any) -> None:
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.perf_counter()
      values["tokens_per_s"] = tokens_per_step / max(now - clock["t"], 1e-9)
      clock["t"] = now
      last.clear()
      last.update(values)
      if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
        raise NonFiniteLoss(f"step {step}: loss={values['loss']} grad_norm={values['grad_norm']}")
      if step % cfg.train.log_every == 0 or step == steps:
        writer.write(step, values)
      bar.set_postfix(loss=f"{values['loss']:.4f}", gnorm=f"{values['grad_norm']:.3g}",
                      lr=f"{values['lr']:.3g}", tok_s=f"{values['tokens_per_s']:.0f}")
      bar.update(1)

    step, pending, saved, status = start, None, latest, "finished"
    stop = preemption.StopRequest()
    try:
      stop.install()
      while step < steps:
        try:
          host_batch = next(data_iter)
        except StopIteration:
          break
        state, metrics = train_step(state, global_batch(host_batch, accumulation, mesh))
        step += 1
        if pending is not None:
          report(*pending)
        pending = (step, metrics)
        if step % cfg.checkpoint.every_steps == 0 or step == steps:
          report(*pending)
          pending = None
          checkpointing.save(manager, step, state, data_iter, force=True)
          saved = step
        if stop.should_stop(step):
          status = "interrupted"
          break
      if pending is not None:
        report(*pending)
      if saved != step:
        checkpointing.save(manager, step, state, data_iter, force=True)
      if status == "interrupted" and is_main:
        echo(f"\nstopped by {stop.name} after step {step}: checkpoint saved in {cfg.checkpoint_dir}; "
             "rerun the same command to resume")
    except NonFiniteLoss as e:
      status = "nonfinite"
      if is_main:
        echo(f"stopping: non-finite values at {e}; the last good checkpoint is step {saved} in "
             f"{cfg.checkpoint_dir}")
    finally:
      manager.wait_until_finished()
      manager.close()
      bar.close()
      writer.close()
      stop.uninstall()
  export_dir = None
  if status == "finished" and cfg.train.export_hf:
    variables_to_hf({"params": state["params"], "buffers": state["buffers"]}, model_cfg,
                    cfg.train.export_hf, cfg.model.path or cfg.model.config, overwrite=True)
    export_dir = cfg.train.export_hf
    if is_main:
      echo(f"exported Hugging Face safetensors to {export_dir}")
  return RunSummary(status, start, step, steps, last, cfg.checkpoint_dir, export_dir,
                    stop.exit_code if status == "interrupted" else None)
