"""The command-line tools' one error policy: each bad input of the reliability issue through the real `main`
of `decode.py`, `train.py` and `convert_weights.py` is one `error:` line on stderr and exit status 2 (a
traceback only with --debug); three run as the installed console scripts in a fresh process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from dmax_jax.checkpoint.safetensors_io import CheckpointError
from dmax_jax.cli import convert, decode, train

TINY = os.path.join(REPO_ROOT, "configs", "tiny_oput.yaml")
FAST = ["--gen-length", "32"]  # with the default block length: no block-length warning


@pytest.fixture(scope="module")
def bad(fixture_dir, tmp_path_factory):
  """Broken copies of the fixture checkpoint, by name."""
  root = tmp_path_factory.mktemp("bad")
  weights = os.path.join(fixture_dir, "model.safetensors")
  with open(os.path.join(fixture_dir, "config.json")) as f:
    config = json.load(f)

  def make(name, config_text=None, weights_bytes=None):
    os.makedirs(root / name)
    if config_text is not None:
      (root / name / "config.json").write_text(config_text)
    if weights_bytes is not None:
      (root / name / "model.safetensors").write_bytes(weights_bytes)
    return str(root / name)

  data = open(weights, "rb").read()
  good = json.dumps(config)
  return {
      "no config": make("noconfig", weights_bytes=data),
      "no weights": make("noweights", config_text=good),
      "truncated": make("truncated", good, data[:3000]),
      "invalid json": make("badjson", '{"hidden_size": 32,', data),
      "random bytes": make("random", good, os.urandom(5000)),
      "more layers": make("layers", json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 2}), data),
      "wider": make("hidden", json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}), data),
  }


def run_main(main, argv, capsys):
  """(exit status, stdout, stderr lines) of a tool's main, as its console script would exit."""
  try:
    status = main(argv)
  except SystemExit as e:  # argparse
    status = e.code
  out, err = capsys.readouterr()
  return status, out, err.strip().splitlines()


def assert_one_error(result, needle):
  status, _, err = result
  assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (status, err)


@pytest.mark.parametrize("name, needle", [
    ("no config", "no config.json at"),
    ("no weights", "no *.safetensors files in"),
    ("truncated", "truncated safetensors file"),
    ("invalid json", "config.json is not valid JSON"),
    ("random bytes", "model.safetensors: not a safetensors file"),
    ("more layers", "config.json has num_hidden_layers=5, the checkpoint's tensors have 3 layers"),
    ("wider", "does config.json match the weights"),
])
def test_decode_bad_checkpoint(bad, capsys, name, needle):
  assert_one_error(run_main(decode.main, ["--ckpt", bad[name], "--prompt-ids", "1,2,3", *FAST], capsys), needle)


@pytest.mark.parametrize("argv, needle", [
    (["--ckpt", "/no/such/dir", "--prompt-ids", "1"], "--ckpt /no/such/dir: no such checkpoint directory"),
    (["--batch-file", "/no/such/prompts.txt"], "--batch-file /no/such/prompts.txt: no such file"),
    (["--prompt-ids", "1,2", "--html", "/"], "--html / is a directory"),
    (["--prompt-ids", "1,2", "--html", "/no/such/dir/replay.html"], "the folder it would go in does not exist"),
    (["--prompt-ids", "1,2", "--mesh", "foo"], "expected axis=size"),
    (["--prompt-ids", "1,2", "--mesh", "expert=16"], "does not fit the 8 available device(s)"),
    (["--prompt-ids", ""], "is empty"),
    (["--prompt-ids", "1,2,999"], "outside the vocabulary"),
    (["--prompt-ids", "1,2,255"], "mask token"),
    (["--prompt-ids", "1,2,3", "--gen-length", "40000"], "max_position_embeddings"),
    (["--prompt", "hello"], "no tokenizer"),
    (["--prompt-ids", "1,x"], "comma-separated integers"),
    (["--prompt-ids", "1,2", "--threshold", "2"], "argument --threshold: must be a confidence in [0, 1], got 2"),
    (["--prompt-ids", "1,2", "--threshold", "-1"], "argument --threshold: must be a confidence in [0, 1]"),
    (["--prompt-ids", "1,2", "--converge-threshold", "1.5"], "argument --converge-threshold: must be a confidence"),
    (["--prompt-ids", "1,2", "--gen-length", "0"], "argument --gen-length: must be a positive integer, got 0"),
    (["--prompt-ids", "1,2", "--block-length", "-8"], "argument --block-length: must be a positive integer"),
    (["--prompt-ids", "1,2", "--steps", "0"], "argument --steps: must be a positive integer"),
    (["--prompt-ids", "1,2", "--temperature", "-0.5"], "argument --temperature: must be >= 0"),
    (["--prompt-ids", "1,2", "--temperature", "nan"], "argument --temperature: must be >= 0"),
    (["--prompt-ids", "1,2", "--seed", "-1"], "argument --seed: must be >= 0"),
    (["--prompt-ids", "1,2", "--batch-size", "2"], "--batch-size needs --batch-file"),
    (["--prompt-ids", "1,2", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["--prompt-ids", "1,2", "--gen-length", "ten"], "argument --gen-length: invalid"),
])
def test_decode_bad_input(fixture_dir, capsys, argv, needle):
  assert_one_error(run_main(decode.main, ["--ckpt", fixture_dir, *argv], capsys), needle)


def test_debug_shows_the_traceback(bad):
  with pytest.raises(CheckpointError, match="not a safetensors file"):
    decode.main(["--ckpt", bad["random bytes"], "--prompt-ids", "1,2,3", "--debug"])


def test_unknown_words_warn_and_strict_refuses(capsys):
  prompt = ["--prompt", "Mia has 9 zebras. She loses 2 zebras. How many zebras does Mia have now?"]
  # gen-length past the model's positions: the run stops right after the prompt checks, before compiling
  status, _, err = run_main(decode.main, [*prompt, "--gen-length", "100000"], capsys)
  assert status == 2 and err[0] == ("warning: 1 word(s) of the prompt are not in the tokenizer's vocabulary "
                                    "and become <|unk|>: 'zebras'"), err
  assert_one_error(run_main(decode.main, [*prompt, "--strict"], capsys), "'zebras' (--strict)")


def test_block_length_other_than_trained_warns(capsys):
  status, _, err = run_main(decode.main, ["--block-length", "30", "--gen-length", "100000"], capsys)
  assert status == 2 and err[0].startswith("warning: --block-length 30: models of this family are trained "
                                           "with blocks of 32"), err
  assert "max_position_embeddings" in err[1]


@pytest.mark.parametrize("argv, needle", [
    (["jax-to-hf", "{fixture}", "{tmp}/out"], "is not a dmax-jax checkpoint: no dmax_checkpoint.json (it holds "
                                              "Hugging Face safetensors: convert them with `hf-to-jax`)"),
    (["hf-to-jax", "{random bytes}", "{tmp}/out"], "not a safetensors file"),
    (["hf-to-jax", "{more layers}", "{tmp}/out"], "num_hidden_layers=5, the checkpoint's tensors have 3 layers"),
    (["hf-to-jax", "{no config}", "{tmp}/out"], "no config.json at"),
    (["jax-to-hf", "{fixture}", "{tmp}/out", "--shard-size", "0"], "argument --shard-size: invalid size '0'"),
])
def test_convert_bad_input(bad, fixture_dir, tmp_path, capsys, argv, needle):
  names = {**bad, "fixture": fixture_dir, "tmp": str(tmp_path)}
  argv = [a.format(**names) if a.startswith("{") else a for a in argv]
  assert_one_error(run_main(convert.main, argv, capsys), needle)
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("argv, needle", [
    (["--set", "model.config=null", "--set", "model.path=/no/such/model"], "no config.json at /no/such/model"),
    (["--set", "model.config=null", "--set", "model.path={truncated}"], "truncated safetensors file"),
    (["--set", "data.train_path=/no/such/data.jsonl"], "/no/such/data.jsonl: No such file or directory"),
    (["--set", "mesh.expert=3"], "does not fit the 8 available device(s)"),
    (["--num-processes", "0"], "argument --num-processes: must be a positive integer"),
    (["--num-processes", "2", "--process-id", "2"], "argument --process-id: must be < --num-processes (2)"),
])
def test_train_bad_input(bad, tmp_path, capsys, argv, needle):
  argv = [a.format(**bad) if "{" in a else a for a in argv]
  mesh = ["--set", "mesh.fsdp=4", "--set", "mesh.expert=2"]  # the 8 test devices; micro batch 4 splits over fsdp
  result = run_main(train.main, ["--config", TINY, "--no-progress", "--set", f"train.output_dir={tmp_path}/run",
                                 *mesh, *argv], capsys)
  assert_one_error(result, needle)


def test_train_missing_config(capsys):
  assert_one_error(run_main(train.main, ["--config", "/no/such/run.yaml"], capsys),
                   "/no/such/run.yaml: No such file or directory")


@pytest.mark.parametrize("script, argv, needle", [
    ("dmax-decode", ["--ckpt", "{random bytes}", "--prompt-ids", "1,2"], "not a safetensors file"),
    ("dmax-train", ["--config", TINY, "--set", "data.train_path=/no/such/data.jsonl", "--set",
                    "train.output_dir={tmp}", "--set", "mesh.fsdp=4", "--set", "mesh.expert=2"],
     "/no/such/data.jsonl: No such file or directory"),
    ("dmax-convert", ["jax-to-hf", "{fixture}", "{tmp}/out"], "convert them with `hf-to-jax`"),
])
def test_console_scripts_fail_in_one_line(bad, fixture_dir, tmp_path, script, argv, needle):
  path = shutil.which(script, path=os.path.dirname(sys.executable))
  assert path, f"{script} is not installed: pip install -e ."
  names = {**bad, "fixture": fixture_dir, "tmp": str(tmp_path)}
  argv = [a.format(**names) if "{" in a else a for a in argv]
  run = subprocess.run([path, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
  err = run.stderr.strip().splitlines()
  assert run.returncode == 2 and len(err) == 1 and needle in err[0], run.stderr
