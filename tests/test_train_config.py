"""Run config: shipped YAMLs load, overrides apply, unknown keys and bad values are rejected by name."""

import os
import subprocess
import sys

import pytest

from dmax_jax.config import ConfigError
from dmax_jax.training import run_record
from dmax_jax.training.run_config import load_run_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(REPO, "configs", "tiny_oput.yaml")


def test_dmax_recipe_config():
  cfg = load_run_config(os.path.join(REPO, "configs", "llada2_mini_oput.yaml"))
  t = cfg.train
  assert (t.learning_rate, t.epochs, t.block_size, t.global_batch_size, t.warmup_ratio, t.schedule) == \
      (2e-6, 2, 32, 8, 0.03, "cosine")
  assert cfg.data.max_seq_len == 2048 and (t.b1, t.b2, t.weight_decay, t.clip_norm) == (0.9, 0.999, 0.01, 1.0)
  assert t.loss_weighting == "sequence"  # the official trainer's per-sequence mean


def test_overrides_are_typed():
  cfg = load_run_config(TINY, ["train.max_steps=3", "data.noise_low=0.5", "mesh.fsdp=2", "model.dtype=bfloat16"])
  assert cfg.train.max_steps == 3 and cfg.data.noise_low == 0.5 and cfg.mesh.fsdp == 2
  assert cfg.model.dtype == "bfloat16"


@pytest.mark.parametrize("override,message", [
    ("train.learnin_rate=1", "train.learnin_rate"),
    ("optim.lr=1", "unknown section 'optim'"),
    ("train.epochs=two", "train.epochs must be int"),
    ("train.on_policy=3", "train.on_policy must be bool"),
    ("data.noise_high=1.5", "noise_high"),
    ("data.max_seq_len=60", "multiple of train.block_size"),
    ("train.micro_batch_size=3", "train.global_batch_size (8) must be a multiple"),
    ("model.dtype=fp8", "model.dtype must be one of"),
    ("model.path=/x", "exactly one of model.path"),
    ("train.max_steps=0", "train.max_steps must be positive"),
    ("trainmax_steps=1", "section.key=value"),
    ("train.loss_weighting=rows", "train.loss_weighting must be one of"),
])
def test_bad_values_name_the_key(override, message):
  with pytest.raises(ConfigError) as e:
    load_run_config(TINY, [override])
  assert message in str(e.value)


def test_cli_rejects_bad_config_and_dry_run_prints_resolved_config():
  run = lambda *a: subprocess.run([sys.executable, "train.py", "--config", TINY, *a], cwd=REPO,
                                  capture_output=True, text=True, timeout=120)
  bad = run("--set", "train.bogus=1")
  assert bad.returncode == 2 and "train.bogus" in bad.stderr
  ok = run("--dry-run", "--set", "train.epochs=5")
  assert ok.returncode == 0 and "epochs: 5" in ok.stdout


def test_resume_check_reads_keys_missing_from_an_older_record_as_their_defaults(tmp_path):
  """A run recorded before `train.loss_weighting` existed ran token-weighted: resuming it with the default
  is the same run; with the other weighting it is another objective."""
  out = str(tmp_path / "run")
  cfg = load_run_config(TINY, [f"train.output_dir={out}"])
  run_record.record(cfg)
  path = os.path.join(out, run_record.FILE)
  with open(path) as f:
    lines = [line for line in f if "loss_weighting" not in line]
  with open(path, "w") as f:
    f.writelines(lines)
  run_record.check_resume(cfg, allow_config_change=False)
  changed = load_run_config(TINY, [f"train.output_dir={out}", "train.loss_weighting=sequence"])
  with pytest.raises(ConfigError, match="train.loss_weighting: 'tokens' -> 'sequence'"):
    run_record.check_resume(changed, allow_config_change=True)


def test_resume_check_refuses_another_objective_asks_for_a_flag_and_lets_the_mesh_change(tmp_path):
  out = str(tmp_path / "run")
  run_record.record(load_run_config(TINY, [f"train.output_dir={out}"]))
  resume = lambda *overrides, allow=False: run_record.check_resume(
      load_run_config(TINY, [f"train.output_dir={out}", *overrides]), allow_config_change=allow)
  with pytest.raises(ConfigError, match="train.on_policy: True -> False.*new train.output_dir"):
    resume("train.on_policy=false", allow=True)
  with pytest.raises(ConfigError, match="train.max_steps: None -> 5.*--allow-config-change"):
    resume("train.max_steps=5")
  resume("train.max_steps=5", allow=True)
  resume("mesh.fsdp=2", "mesh.expert=4")
