"""The tiny-DMax pipeline's smoke mode end to end (the same code path as the full run, a few steps each)."""

import json
import os
import subprocess
import sys

import pytest

from dmax_jax.experiments.tiny_dmax import pipeline
from dmax_jax.experiments.tiny_dmax.__main__ import parse_args

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _run(args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, like a user's run
  return subprocess.run([sys.executable, "-m", "dmax_jax.experiments.tiny_dmax", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_arguments():
  pc, stages, force = parse_args(["--smoke", "--run-dir", "/tmp/x", "--stages", "evaluate,prepare", "--base-steps", "3"])
  assert (pc.run_dir, pc.base_steps, pc.dmax_steps) == ("/tmp/x", 3, pipeline.SMOKE["dmax_steps"])
  assert stages == ["prepare", "evaluate"] and not force
  pc, stages, _ = parse_args([])
  assert pc == pipeline.PipelineConfig() and stages == list(pipeline.STAGES)
  for bad in (["--stages", "train"], ["--base-steps", "0"]):
    with pytest.raises(SystemExit):
      parse_args(bad)


@pytest.mark.slow  # ~1 min; each stage's pieces (trainer, export, decoders, task) have default tests
def test_smoke_pipeline_runs_every_stage_and_resumes(tmp_path):
  run_dir = str(tmp_path / "run")
  proc = _run(["--smoke", "--run-dir", run_dir])
  assert proc.returncode == 0, proc.stderr[-3000:]
  for stage in pipeline.STAGES:
    assert os.path.exists(os.path.join(run_dir, f"{stage}.done.json")), stage
  for model in ("base", "dmax"):
    files = set(os.listdir(os.path.join(run_dir, model)))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
  rows = [json.loads(line) for line in open(os.path.join(run_dir, "trajectories", "oput.jsonl"))]
  flags = [r["flag"] for r in rows]
  assert rows and flags.count(True) == flags.count(False) == len(rows) // 2
  table = open(os.path.join(run_dir, "results", "results.md")).read().strip().splitlines()
  pc = pipeline.PipelineConfig(**pipeline.SMOKE)
  n_points = 2 * (len(pc.threshold_grid) + len(pc.spd_grid) * len(pc.spd_converge_grid))
  assert len(table) == 2 + n_points
  assert {line.split("|")[1].strip() for line in table[2:]} == {pipeline.BASE, pipeline.DMAX}
  with open(os.path.join(run_dir, "results", "accuracy_vs_tpf.png"), "rb") as f:
    assert f.read(4) == b"\x89PNG"
  assert "TPF" in proc.stdout
  # A second run finds every stage done and redoes nothing.
  again = _run(["--smoke", "--run-dir", run_dir, "--stages", "prepare,base,dmax"], timeout=120)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("already done") == 3
