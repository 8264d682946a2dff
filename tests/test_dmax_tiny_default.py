"""The shipped DMax-tiny checkpoint: decode.py's default model and prompt, and its accuracy on test problems."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from dmax_jax import ModelConfig
from dmax_jax.cli import decode
from dmax_jax.experiments.tiny_dmax import model_config, task, tokenizer


def _sample_problem() -> task.Problem:
  """The test-split problem whose prompt is decode.py's default (its answer comes from the generator)."""
  matches = [p for p in task.generate_split("test", 500) if p.prompt == decode.DEFAULT_PROMPT]
  assert matches, "decode.DEFAULT_PROMPT is not a test-split problem of the tiny task"
  return matches[0]


def test_shipped_checkpoint_is_the_pipeline_architecture():
  files = set(os.listdir(decode.DEFAULT_CKPT))
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
  size = sum(os.path.getsize(os.path.join(decode.DEFAULT_CKPT, f)) for f in files)
  assert size < 30e6
  tok = tokenizer.build_tokenizer()
  expected = model_config.tiny_model_config(tok.get_vocab_size(), **tokenizer.special_ids(tok))
  assert ModelConfig.from_json(decode.DEFAULT_CKPT) == expected
  with open(os.path.join(decode.DEFAULT_CKPT, "tokenizer.json")) as f:
    assert json.load(f)["model"]["vocab"] == json.loads(tok.to_str())["model"]["vocab"]


def test_decode_without_arguments_answers_the_sample_problem(capsys, tmp_path):
  html = tmp_path / "replay.html"
  assert decode.main(["--json", "--html", str(html)]) == 0
  out = capsys.readouterr().out
  lines = out.strip().splitlines()
  assert lines[0] == f"prompt: {decode.DEFAULT_PROMPT}"
  record = json.loads(lines[-1])
  assert task.is_correct(record["text"], _sample_problem().answer), record["text"]
  assert record["stopped_by_eos"] and record["nfe"] >= 1
  assert record["tpf"] == pytest.approx(record["num_tokens"] / record["nfe"])
  assert any(line.startswith("NFE ") and "TPF" in line for line in lines)
  page = html.read_text()
  assert page.startswith("<!DOCTYPE html>") and "answer" in page


def test_another_checkpoint_needs_a_prompt(fixture_dir, capsys):
  assert decode.main(["--ckpt", fixture_dir]) == 2
  assert capsys.readouterr().err == "error: give a prompt: --prompt, --prompt-ids or --batch-file\n"


def test_dmax_tiny_spd_solves_most_test_problems():
  """SPD with the decode.py defaults on 50 other test problems (seed 7), one compiled batch."""
  from dmax_jax import load_model
  from dmax_jax.decoding import DecodeOptions, generate
  from dmax_jax.tokenization import chat_ids, load_tokenizer
  cfg, variables = load_model(decode.DEFAULT_CKPT)
  hf = load_tokenizer(decode.DEFAULT_CKPT)
  problems = task.generate_split("test", 50, seed=7)
  prompts = [chat_ids(hf, [{"role": "user", "content": p.prompt}], add_generation_prompt=True) for p in problems]
  rows = generate(cfg, variables, prompts, DecodeOptions(mode="spd", gen_length=64))
  texts = [hf.decode(r.ids, skip_special_tokens=True) for r in rows]
  accuracy = sum(task.is_correct(t, p.answer) for t, p in zip(texts, problems)) / len(problems)
  tpf = sum(r.num_tokens for r in rows) / sum(r.nfe for r in rows)
  # Shipped model: 72% at TPF 3.46 here (75.4% / 3.27 on the 500-problem test set); the base model with the
  # same decoder gets 58.6% / 2.26 there.
  assert accuracy >= 0.6, (accuracy, texts[:3])
  assert tpf >= 2.8, tpf


def test_loading_the_tokenizer_prints_nothing_even_for_long_prompts():
  """No third-party advice (PyTorch not installed) and no tokenizer length warning on stderr."""
  code = ("from dmax_jax.tokenization import load_tokenizer; t = load_tokenizer('checkpoints/dmax-tiny'); "
          "print(len(t('Zoe has 8 pens . ' * 200)['input_ids']))")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if not k.startswith("TRANSFORMERS_")})
  assert run.returncode == 0 and int(run.stdout) > 800, run.stderr
  assert run.stderr == ""


def test_readme_states_the_range_dmax_tiny_was_trained_on():
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  stated = readme.split("<!-- tiny-task-range -->")[1].split("<!-- /tiny-task-range -->")[0]
  assert stated == task.TaskConfig().describe(), "paste TaskConfig().describe() into the README"
