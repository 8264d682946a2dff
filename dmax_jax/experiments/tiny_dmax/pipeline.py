"""The tiny-DMax pipeline, from nothing to the accuracy-vs-TPF table and plot (~66 minutes on 2 CPU cores).

Stages (each skipped when its `<run_dir>/<stage>.done.json` exists, so a rerun resumes; training also
resumes from its Orbax checkpoints):
  prepare       tokenizer, tiny model config, base-model SFT rows (one fresh problem per row).
  base          masked-diffusion SFT from scratch (train.py's trainer, rollout off) -> `base/` (HF dir).
  trajectories  the base model decodes training prompts (threshold decoding; `dmax_jax.trajectories`) -> OPUT
                rows, each kept response once with flag true and once with flag false, shuffled (DMax's recipe).
  dmax          OPUT fine-tune of the base model on those rows -> `dmax/` (HF dir): "DMax-tiny".
  evaluate      both models x both decoders over a threshold grid on the test split -> results/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Sequence

from tqdm import tqdm

from dmax_jax.experiments.tiny_dmax import data, evaluation, model_config, task, tokenizer
from dmax_jax.io import write_text_atomic

STAGES = ("prepare", "base", "trajectories", "dmax", "evaluate")
BASE, DMAX = "base", "DMax-tiny"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  run_dir: str = "runs/tiny_dmax"
  seed: int = 0
  max_seq_len: int = 96          # training rows (prompt + answer + EOS; at most 87 tokens with the default task)
  block_length: int = 32
  gen_length: int = 64           # covers the longest answer (53 tokens with EOS)
  # Base model: masked-diffusion SFT, one fresh problem per row.
  base_steps: int = 2700
  base_batch: int = 32
  base_lr: float = 2e-3
  base_noise: tuple[float, float] = (0.05, 1.0)
  # Trajectories: the base model decodes this many training prompts; by default only its correct answers
  # are kept (rejection sampling: the model's own wording and step order, without its arithmetic slips).
  trajectory_prompts: int = 8000
  trajectory_threshold: float = 0.9
  trajectory_correct_only: bool = True
  # DMax: OPUT fine-tune.
  dmax_steps: int = 1600
  dmax_batch: int = 32
  dmax_lr: float = 5e-4
  dmax_noise: tuple[float, float] = (0.5, 1.0)
  # Evaluation.
  test_problems: int = 500
  decode_batch: int = 50
  threshold_grid: tuple[float, ...] = (0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.0)
  spd_grid: tuple[float, ...] = (0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.0)
  # One SPD curve per convergence threshold (a block ends once every decoded position is this confident);
  # 0.9 is decode.py's default.
  spd_converge_grid: tuple[float, ...] = (0.9, 0.5)
  checkpoint_every: int = 250

  def path(self, *parts: str) -> str:
    return os.path.join(self.run_dir, *parts)


# trajectory_correct_only=False: a 2-step base model solves nothing.
SMOKE = dict(run_dir="runs/tiny_dmax_smoke", base_steps=2, base_batch=8, trajectory_prompts=8,
             trajectory_correct_only=False, dmax_steps=2, dmax_batch=8, test_problems=8, decode_batch=8,
             threshold_grid=(0.9, 0.0), spd_grid=(0.9, 0.0), checkpoint_every=2)


# ---- stages ---------------------------------------------------------------------------------------

def prepare(pc: PipelineConfig) -> dict[str, Any]:
  """Tokenizer dir, `model_init/config.json`, `data/base_sft.jsonl`."""
  tok = tokenizer.build_tokenizer()
  tokenizer.save_tokenizer(tok, pc.path("tokenizer"), model_max_length=pc.max_seq_len + pc.gen_length)
  cfg = model_config.tiny_model_config(tok.get_vocab_size(), **tokenizer.special_ids(tok),
                                       max_position_embeddings=max(512, pc.max_seq_len + pc.gen_length))
  model_config.write_hf_config(cfg, pc.path("model_init"))
  rows, skipped = [], 0
  problems = task.iter_split("train", pc.seed)
  with tqdm(total=pc.base_steps * pc.base_batch, desc="base SFT rows", unit="row") as bar:
    while len(rows) < pc.base_steps * pc.base_batch:
      p = next(problems)
      row = data.sft_rows([p], pc.seed)[0]
      text = tokenizer.render_prompt(p.prompt) + row["messages"][1]["content"] + tokenizer.EOS_TOKEN
      if len(tok.encode(text).ids) > pc.max_seq_len:
        skipped += 1
        continue
      rows.append(row)
      bar.update()
  data.write_jsonl(pc.path("data", "base_sft.jsonl"), rows)
  return {"rows": len(rows), "skipped_too_long": skipped, "parameters": model_config.parameter_summary(cfg)}


def _train(pc: PipelineConfig, name: str, raw_model: dict, train_path: str, steps: int, batch: int, lr: float,
           noise: tuple[float, float], on_policy: bool) -> dict[str, Any]:
  """Runs train.py's trainer and exports `<run_dir>/<name>/` (HF safetensors + config + tokenizer)."""
  from dmax_jax.training import trainer
  from dmax_jax.training.run_config import load_run_config
  out = pc.path(name)
  raw = {
      "model": raw_model,
      "data": {"train_path": train_path, "tokenizer": pc.path("tokenizer"), "max_seq_len": pc.max_seq_len,
               "noise_low": noise[0], "noise_high": noise[1], "seed": pc.seed, "read_threads": 1},
      "train": {"output_dir": pc.path("train_" + name), "learning_rate": lr, "epochs": 1000, "max_steps": steps,
                "global_batch_size": batch, "warmup_ratio": 0.05, "schedule": "cosine", "end_lr_ratio": 0.05,
                "block_size": pc.block_length, "on_policy": on_policy, "export_hf": out, "tensorboard": False},
      "checkpoint": {"every_steps": pc.checkpoint_every, "keep": 1},
  }
  start = time.perf_counter()
  summary = trainer.run(load_run_config(raw=raw), echo=lambda s: None)
  if summary.status != "finished":
    raise RuntimeError(f"{name} training stopped: {summary.status} at step {summary.final_step}")
  for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copyfile(pc.path("tokenizer", f), os.path.join(out, f))
  return {"steps": summary.final_step, "seconds": time.perf_counter() - start, "last_metrics": summary.last_metrics}


def train_base(pc: PipelineConfig) -> dict[str, Any]:
  return _train(pc, "base", {"config": pc.path("model_init", "config.json"), "init_seed": pc.seed},
                pc.path("data", "base_sft.jsonl"), pc.base_steps, pc.base_batch, pc.base_lr, pc.base_noise,
                on_policy=False)


def _load(pc: PipelineConfig, name: str):
  from dmax_jax.loading import load_model
  from dmax_jax.tokenization import load_tokenizer
  cfg, variables = load_model(pc.path(name))
  return cfg, variables, load_tokenizer(pc.path(name))


def spd_decoder_name(converge_threshold: float) -> str:
  """Curve name of SPD with a convergence threshold: plain "spd" for the decoder's default."""
  from dmax_jax.decoding import DecodeOptions
  default = DecodeOptions().converge_threshold
  return "spd" if converge_threshold == default else f"spd (converge {converge_threshold:g})"


def decode_questions(cfg, variables, hf_tok, questions: Sequence[str], options, batch: int,
                     desc: str) -> tuple[list[str], list[Any], float]:
  """Decodes chat prompts in fixed-shape batches of one prompt width (the last padded by repetition, so one
  compiled program serves every batch); returns (answer texts, RowResults, seconds)."""
  from dmax_jax.decoding import prompt_bucket
  from dmax_jax.evaluation.runner import Model, decode_batch
  from dmax_jax.tokenization import chat_ids
  prompts = [chat_ids(hf_tok, [{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
  width = prompt_bucket(max(len(p) for p in prompts), options.block_length)
  model = Model(cfg, variables, hf_tok, "")
  rows, start = [], time.perf_counter()
  for i in tqdm(range(0, len(prompts), batch), desc=desc, unit="batch", leave=False):
    rows += decode_batch(model, prompts[i:i + batch], options, batch, prompt_width=width)[0]
  texts = [hf_tok.decode(r.ids, skip_special_tokens=True) for r in rows]
  return texts, rows, time.perf_counter() - start


def trajectories(pc: PipelineConfig) -> dict[str, Any]:
  """Base-model answers to training prompts -> `trajectories/oput.jsonl` (each kept answer with flag true and
  false), through the library's trajectory builder (`python -m dmax_jax.trajectories`)."""
  from dmax_jax import trajectories as builder
  from dmax_jax.decoding import DecodeOptions
  from dmax_jax.evaluation.runner import Model
  from dmax_jax.experiments.tiny_dmax import eval_task
  cfg, variables, hf_tok = _load(pc, "base")
  problems = task.generate_split("train", pc.trajectory_prompts, seed=pc.seed)  # prompts the base model trained on
  records = [{"question": p.prompt, "answer": str(p.answer)} for p in problems]
  options = DecodeOptions(mode="threshold", block_length=pc.block_length, gen_length=pc.gen_length,
                          threshold=pc.trajectory_threshold)
  start = time.perf_counter()
  builder.decode_shard(Model(cfg, variables, hf_tok, pc.path("base")), records, options, pc.path("trajectories"),
                       batch_size=pc.decode_batch, verify=eval_task.TASK if pc.trajectory_correct_only else None)
  seconds = time.perf_counter() - start
  return {**builder.build_oput(pc.path("trajectories"), 1, len(records)), "seconds": seconds}


def train_dmax(pc: PipelineConfig) -> dict[str, Any]:
  return _train(pc, "dmax", {"path": pc.path("base")}, pc.path("trajectories", "oput.jsonl"), pc.dmax_steps,
                pc.dmax_batch, pc.dmax_lr, pc.dmax_noise, on_policy=True)


def evaluate(pc: PipelineConfig) -> dict[str, Any]:
  """Accuracy and TPF of {base, DMax-tiny} x {threshold, SPD} over the threshold grids on the test split."""
  from dmax_jax.decoding import DecodeOptions
  problems = task.generate_split("test", pc.test_problems, seed=pc.seed)
  points = []
  # (curve name, decoder mode, thresholds, other DecodeOptions fields)
  curves = [("threshold", "threshold", pc.threshold_grid, {})] + [
      (spd_decoder_name(c), "spd", pc.spd_grid, {"converge_threshold": c}) for c in pc.spd_converge_grid]
  for name, label in (("base", BASE), ("dmax", DMAX)):
    cfg, variables, hf_tok = _load(pc, name)
    for decoder, mode, grid, extra in curves:
      for th in grid:
        options = DecodeOptions(mode=mode, block_length=pc.block_length, gen_length=pc.gen_length, threshold=th,
                                **extra)
        texts, rows, seconds = decode_questions(cfg, variables, hf_tok, [p.prompt for p in problems], options,
                                                pc.decode_batch, f"{label} {decoder} {th:g}")
        points.append(evaluation.evaluate(label, decoder, th, problems, texts, [r.num_tokens for r in rows],
                                          [r.nfe for r in rows], seconds))
        tqdm.write(f"{label:>9} {decoder:>20} {th:<5g} accuracy {100 * points[-1].accuracy:5.1f}%  "
                   f"TPF {points[-1].tpf:5.2f}  ({seconds:.1f} s)")
  evaluation.save_points(pc.path("results", "points.json"), points)
  evaluation.write_markdown(pc.path("results", "results.md"), points)
  evaluation.plot_accuracy_vs_tpf(points, pc.path("results", "accuracy_vs_tpf.png"))
  head = {decoder: evaluation.headline(points, base=(BASE, "threshold"), dmax=(DMAX, decoder))
          for decoder, mode, _, _ in curves if mode == "spd"}
  write_text_atomic(pc.path("results", "headline.json"), json.dumps(head, indent=1) + "\n")
  return {"points": len(points), "headline": head}


_RUNNERS = {"prepare": prepare, "base": train_base, "trajectories": trajectories, "dmax": train_dmax,
            "evaluate": evaluate}


def run(pc: PipelineConfig, stages: Sequence[str] = STAGES, force: bool = False) -> dict[str, Any]:
  """Runs the stages in order (skipping completed ones unless `force`); returns each stage's summary."""
  summaries = {}
  for stage in stages:
    done = pc.path(f"{stage}.done.json")
    if os.path.exists(done) and not force:
      with open(done) as f:
        summaries[stage] = json.load(f)
      tqdm.write(f"[{stage}] already done ({done})")
      continue
    tqdm.write(f"[{stage}] ...")
    start = time.perf_counter()
    summary = _RUNNERS[stage](pc)
    summary["stage_seconds"] = time.perf_counter() - start
    write_text_atomic(done, json.dumps(summary, indent=1, default=str) + "\n")
    tqdm.write(f"[{stage}] done in {summary['stage_seconds']:.0f} s")
    summaries[stage] = summary
  return summaries
