"""Trajectories -> OPUT data set -> the trainer's input: DMax-tiny answers tiny-task prompts in two shards, only
complete and correct answers are kept, each as a flag-true and a flag-false row, and `train.py` reads them."""

import contextlib
import io
import json
import os

import pytest

from dmax_jax import trajectories
from dmax_jax.cli import trajectories as trajectories_cli
from dmax_jax.cli.decode import DEFAULT_CKPT
from dmax_jax.errors import InputError
from dmax_jax.experiments.tiny_dmax import task

N = 6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("traj")
  prompts = root / "prompts.jsonl"
  problems = task.generate_split("train", N, seed=3)
  prompts.write_text("".join(json.dumps({"question": p.prompt, "answer": str(p.answer)}) + "\n" for p in problems))
  out = str(root / "out")
  common = ["--quiet", "--ckpt", DEFAULT_CKPT, "--prompts", str(prompts), "--output", out, "--verify", "tiny",
            "--gen-length", "64", "--batch-size", "4", "--num-shards", "2"]
  with contextlib.redirect_stdout(io.StringIO()):
    assert trajectories_cli.main([*common, "--shard-index", "0"]) == 0
    with pytest.raises(InputError, match="3 of 6 prompts have no response yet"):
      trajectories.build_oput(out, 2, N)
    assert trajectories_cli.main([*common, "--shard-index", "1"]) == 0
    assert trajectories_cli.main(["--prompts", str(prompts), "--output", out, "--num-shards", "2", "--build-only"]) == 0
  return problems, out


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_shards_answer_every_prompt_once_and_keep_correct_complete_answers(built):
  problems, out = built
  shards = [_lines(trajectories.shard_path(out, i, 2)) for i in range(2)]
  assert [r["doc_id"] for r in shards[0]] == [0, 2, 4] and [r["doc_id"] for r in shards[1]] == [1, 3, 5]
  responses = {r["doc_id"]: r for shard in shards for r in shard}
  for i, problem in enumerate(problems):
    assert responses[i]["question"] == problem.prompt
    if responses[i]["kept"]:
      assert task.is_correct(responses[i]["response"], problem.answer)
  kept = [r for r in responses.values() if r["kept"]]
  assert kept, "DMax-tiny solves most tiny-task prompts"
  rows = _lines(os.path.join(out, "oput.jsonl"))
  pairs = sorted((r["messages"][0]["content"], r["messages"][1]["content"], r["flag"]) for r in rows)
  assert pairs == sorted((r["question"], r["response"], flag) for r in kept for flag in (True, False))
  assert [r["flag"] for r in rows] != [True, False] * len(kept)  # shuffled


def test_oput_rows_feed_the_trainers_data_pipeline(built):
  from dmax_jax.tokenization import load_tokenizer
  from dmax_jax.training.data import make_dataset
  from dmax_jax.training.run_config import DataSection
  _, out = built
  tok = load_tokenizer(DEFAULT_CKPT)
  data = DataSection(train_path=os.path.join(out, "oput.jsonl"), tokenizer=DEFAULT_CKPT, max_seq_len=96,
                     read_threads=1, prefetch=1, shuffle=False)
  batch = next(iter(make_dataset(data, rows_per_process=2, epochs=1, eos_id=tok.eos_token_id,
                                 mask_id=tok.convert_tokens_to_ids("<|mask|>"))))
  first = _lines(os.path.join(out, "oput.jsonl"))[:2]
  assert batch["flags"].tolist() == [r["flag"] for r in first]
  assert (batch["labels"] != -100).sum(axis=1).min() > 0


def test_trajectory_settings_default_to_llada2_generate():
  options = trajectories.DEFAULT_OPTIONS
  assert (options.mode, options.resolved_threshold, options.block_length, options.gen_length) == \
      ("threshold", 0.95, 32, 2048)


def test_one_train_py_step_on_the_built_data(built, tmp_path):
  from dmax_jax.cli import train as train_cli
  _, out = built
  config = tmp_path / "oput.yaml"
  config.write_text(json.dumps({  # JSON is YAML
      "model": {"path": DEFAULT_CKPT}, "data": {"train_path": os.path.join(out, "oput.jsonl"),
                                               "tokenizer": DEFAULT_CKPT, "max_seq_len": 96, "read_threads": 1},
      "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "global_batch_size": 2, "block_size": 32,
                "loss_weighting": "sequence", "tensorboard": False},
      "mesh": {"fsdp": 2, "expert": 4}, "checkpoint": {"every_steps": 1}}))
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    assert train_cli.main(["--config", str(config)]) == 0
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    metrics = [json.loads(line) for line in f]
  assert [m["step"] for m in metrics] == [1] and metrics[0]["loss"] > 0, printed.getvalue()[-2000:]


def test_build_counts_only_the_prompts_asked_for(tmp_path):
  out = str(tmp_path)
  with open(trajectories.shard_path(out, 0, 1), "w") as f:  # responses to prompts 0-4 and 7-9 of a longer file
    f.writelines(json.dumps({"doc_id": i, "question": f"q{i}", "response": f"a{i}", "kept": True, "nfe": 1}) + "\n"
                 for i in (0, 1, 2, 3, 4, 7, 8, 9))
  assert trajectories.build_oput(out, 1, 5)["kept"] == 5
  with pytest.raises(InputError, match="2 of 8 prompts have no response yet"):
    trajectories.build_oput(out, 1, 8)


def test_rerun_with_other_prompts_or_settings_is_refused(built, tmp_path, capsys):
  _, out = built
  other = tmp_path / "other.jsonl"
  other.write_text(json.dumps({"question": "Tom has 3 eggs. How many eggs does Tom have now?", "answer": "3"}) + "\n")
  base = ["--quiet", "--ckpt", DEFAULT_CKPT, "--output", out, "--gen-length", "64", "--num-shards", "2",
          "--shard-index", "0"]
  assert trajectories_cli.main([*base, "--prompts", str(other), "--verify", "tiny"]) == 2
  assert "holds another question for record 0" in capsys.readouterr().err
  same_prompts = os.path.join(os.path.dirname(out), "prompts.jsonl")
  assert trajectories_cli.main([*base, "--prompts", same_prompts]) == 2  # without --verify this time
  assert "other settings (verify)" in capsys.readouterr().err
