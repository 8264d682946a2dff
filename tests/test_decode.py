"""Compiled decoders vs the fixture traces: official LLaDA2.0 generate() and DMax SPD, token-, NFE- and
step-exact, through the public API and through `decode.py --prompt-ids ... --json`."""

import json
import os

import numpy as np
import pytest

from conftest import FIXTURE_DIR
from dmax_jax import load_model
from dmax_jax.cli import decode
from dmax_jax.decoding import DecodeOptions, generate


@pytest.fixture(scope="module")
def loaded_model(fixture_dir):
  """The fixture checkpoint as decode.py loads it (same arrays/placement, so the CLI tests reuse the
  compiled programs of the API tests)."""
  return load_model(fixture_dir)


def _load(fixture_dir, name):
  with open(os.path.join(fixture_dir, name)) as f:
    data = json.load(f)
  return data, [(p, r) for p in data["prompts"] for r in p["runs"]]


def _spd_runs():
  return _load(FIXTURE_DIR, "spd_decode.json")[1]


def _threshold_runs():
  return _load(FIXTURE_DIR, "threshold_decode.json")[1]


def _ids(case):
  return f"P{case[0]['prompt_length']}-T{case[1]['threshold']}"


def _spd_options(fixture_dir, run):
  params = _load(fixture_dir, "spd_decode.json")[0]["parameters"]
  return DecodeOptions(mode="spd", block_length=params["block_length"], gen_length=params["gen_length"],
                       threshold=run["threshold"], converge_threshold=params["stop_confidence"],
                       eos_id=params["eos_id"], mask_id=params["mask_id"], trace=True)


def _threshold_options(fixture_dir, run):
  params = _load(fixture_dir, "threshold_decode.json")[0]["parameters"]
  return DecodeOptions(mode="threshold", block_length=params["block_length"], gen_length=params["gen_length"],
                       steps=params["steps"], threshold=run["threshold"], eos_id=params["eos_id"],
                       mask_id=params["mask_id"], trace=True)


@pytest.mark.parametrize("case", _spd_runs(), ids=_ids)
def test_spd_matches_fixture(loaded_model, fixture_dir, case):
  prompt, run = case
  cfg, variables = loaded_model
  got = generate(cfg, variables, [prompt["prompt"]], _spd_options(fixture_dir, run))[0]
  assert got.generated == run["generated_region"]
  assert prompt["prompt"] + got.generated == run["final_sequence"]
  assert got.ids == run["answer_cut_at_first_eos"]
  assert got.nfe == run["nfe"]
  assert got.num_tokens == run["token_number"] and got.tpf == pytest.approx(run["tpf"])
  assert got.stopped_by_eos == run["stopped_by_eos"]
  assert len(got.trace) == len(run["step_trace"]) == run["nfe"] - 1
  for mine, ref in zip(got.trace, run["step_trace"]):
    for key in ("block", "step", "block_start", "input_block_tokens", "decoded_positions", "changed_positions",
                "block_tokens_after", "stop_reason", "argmax"):
      assert mine[key] == ref[key], (key, ref["block"], ref["step"])
    np.testing.assert_allclose(mine["max_prob"], ref["max_prob"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", _threshold_runs(), ids=_ids)
def test_threshold_matches_official_generate(loaded_model, fixture_dir, case):
  prompt, run = case
  cfg, variables = loaded_model
  got = generate(cfg, variables, [prompt["prompt"]], _threshold_options(fixture_dir, run))[0]
  assert got.ids == run["returned_ids"]
  assert got.nfe == run["nfe"] == len(run["forward_input_lengths"])
  assert got.num_tokens == run["num_returned_tokens"] and got.tpf == pytest.approx(run["tpf"])
  assert got.stopped_by_eos == run["contains_eos"]
  assert prompt["prompt"] + got.generated == run["final_x"]
  assert len(got.trace) == len(run["step_trace"])
  for mine, ref in zip(got.trace, run["step_trace"]):
    assert (mine["block"], mine["step"] - 1) == (ref["block"], ref["step"])
    assert mine["decoded_positions"] == ref["transferred_positions"]
    assert mine["block_tokens_after"] == ref["block_tokens_after"]


def _run_cli(capsys, tmp_path, fixture_dir, argv):
  html = tmp_path / "replay.html"
  assert decode.main(["--ckpt", fixture_dir, "--json", "--html", str(html)] + argv) == 0
  out = capsys.readouterr().out.strip().splitlines()
  page = html.read_text()
  assert page.startswith("<!DOCTYPE html>") and '"frames"' in page
  return json.loads(out[-1]), out


@pytest.mark.parametrize("case", _spd_runs(), ids=_ids)
def test_cli_spd_matches_fixture(capsys, tmp_path, fixture_dir, case):
  prompt, run = case
  got, lines = _run_cli(capsys, tmp_path, fixture_dir, [
      "--prompt-ids", ",".join(map(str, prompt["prompt"])), "--mode", "spd", "--block-length", "8",
      "--gen-length", "24", "--threshold", str(run["threshold"]), "--converge-threshold", "0.9"])
  assert got["ids"] == run["answer_cut_at_first_eos"] and got["generated"] == run["generated_region"]
  assert got["nfe"] == run["nfe"] and got["tpf"] == pytest.approx(run["tpf"])
  assert got["stopped_by_eos"] == run["stopped_by_eos"]
  assert any(line.startswith("NFE") for line in lines) and "tokens/s" in "\n".join(lines)


@pytest.mark.parametrize("case", _threshold_runs(), ids=_ids)
def test_cli_threshold_matches_official_generate(capsys, tmp_path, fixture_dir, case):
  prompt, run = case
  got, _ = _run_cli(capsys, tmp_path, fixture_dir, [
      "--prompt-ids", ",".join(map(str, prompt["prompt"])), "--mode", "threshold", "--block-length", "8",
      "--steps", "8", "--gen-length", "24", "--threshold", str(run["threshold"])])
  assert got["ids"] == run["returned_ids"] and got["nfe"] == run["nfe"]
  assert got["tpf"] == pytest.approx(run["tpf"])
  assert {"compile_s", "decode_s", "tokens_per_s", "text"} <= set(got)


def test_cli_chat_prompt_uses_the_checkpoint_tokenizer(capsys, tmp_path, fixture_dir):
  from transformers import PreTrainedTokenizerFast

  from dmax_jax.experiments.tiny_dmax import tokenizer as tiny_tokenizer
  for name in ("config.json", "model.safetensors"):
    os.symlink(os.path.join(fixture_dir, name), tmp_path / name)
  letters = "abcdefghijklmnopqrstuvwxyz"
  words = [a + b for a in letters for b in letters][:230]  # + 6 special + 20 digit pieces = the model's 256 ids
  # Digit-by-digit numbers (number_chunk=1) keep the vocabulary at the fixture model's size.
  tok_built = tiny_tokenizer.build_tokenizer(["".join(" " + w for w in words)], number_chunk=1)
  tiny_tokenizer.save_tokenizer(tok_built, str(tmp_path))
  tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
  assert len(tok) == 256
  got, lines = _run_cli(capsys, tmp_path, str(tmp_path), [
      "--prompt", "aa ab", "--block-length", "8", "--gen-length", "24", "--threshold", "0.5"])
  prompt = tok.apply_chat_template([{"role": "user", "content": "aa ab"}], add_generation_prompt=True)
  prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
  want = generate(*load_model(str(tmp_path)), [prompt],
                  DecodeOptions(block_length=8, gen_length=24, threshold=0.5, trace=True))[0]
  assert got["ids"] == want.ids and got["nfe"] == want.nfe
  assert got["text"] == tok.decode(want.ids, skip_special_tokens=True)
  assert lines[0] == f"answer: {got['text']}"
