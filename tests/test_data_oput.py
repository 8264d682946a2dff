"""OPUT data pipeline: labels, noise, chat tokenisation, bad rows, determinism, per-process sharding."""

import dataclasses
import json

import numpy as np
import pytest

from dmax_jax.training.data import IGNORE_INDEX, OputExample, build_labels, make_dataset
from dmax_jax.training.run_config import DataSection

EOS, MASK = 251, 255


def _example(**kw):
  args = dict(num_rows=10, max_seq_len=16, eos_id=EOS, mask_id=MASK, noise_low=0.5, noise_high=0.5,
              eos_loss_tokens=2, default_flag=True, seed=0)
  args.update(kw)
  return OputExample(**args)


def _row(**kw) -> bytes:
  return json.dumps(kw).encode()


def test_labels_ignore_prompt_and_late_eos_padding():
  ids = np.array([5, 6, 7, 8, 9, EOS, EOS, EOS, EOS, EOS])
  labels = build_labels(ids, prompt_length=2, eos_id=EOS, eos_loss_tokens=2)
  np.testing.assert_array_equal(labels, [-100, -100, 7, 8, 9, EOS, EOS, -100, -100, -100])


def test_example_pads_with_eos_and_masks_only_answer_positions():
  ex = _example(noise_low=1.0, noise_high=1.0)
  out = ex(3, (3, _row(input_ids=[1, 2, 3, 4, 5], prompt_lengths=3, flag=False)))
  np.testing.assert_array_equal(out["clean_ids"], [1, 2, 3, 4, 5] + [EOS] * 11)
  np.testing.assert_array_equal(out["noisy_ids"], [1, 2, 3] + [MASK] * 13)
  np.testing.assert_array_equal(out["labels"], [-100] * 3 + [4, 5, EOS, EOS] + [-100] * 9)
  assert not out["flags"]


def test_noise_depends_on_seed_epoch_and_row_only():
  ex = _example(max_seq_len=256)
  row = _row(input_ids=list(range(200)), prompt_lengths=10)
  a, b = ex(3, (3, row))["noisy_ids"], ex(3, (3, row))["noisy_ids"]
  np.testing.assert_array_equal(a, b)
  next_epoch = ex(13, (3, row))["noisy_ids"]  # index 13 of 10 rows = epoch 1
  assert not np.array_equal(a, next_epoch)
  assert 0.35 < np.mean(a[10:200] == MASK) < 0.65


@pytest.mark.parametrize("line,reason", [
    (b"\xff\xfe not utf8", "not UTF-8"),
    (b"{not json", "not JSON"),
    (_row(input_ids=[1, 2]), "needs 'messages'"),
    (_row(input_ids=[1, 2, 3], prompt_lengths=3), "empty answer"),
    (_row(input_ids=list(range(40)), prompt_lengths=20), "empty answer"),  # prompt fills max_seq_len
    (_row(input_ids=[1, "x"], prompt_lengths=1), "list of ints"),
    (_row(input_ids=[1, 2, 3], prompt_lengths=1, flag="yes"), "flag"),
    (_row(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]), "tokenizer"),
])
def test_bad_rows_are_counted_and_skipped(caplog, line, reason):
  ex = _example()
  assert ex(0, (0, line)) is None
  assert ex.bad_rows == 1
  assert reason in caplog.text


def test_chat_rows_use_the_chat_template(tmp_path):
  from transformers import AutoTokenizer
  from dmax_jax.experiments.tiny_dmax import tokenizer as tiny_tok
  tok = tiny_tok.build_tokenizer(["how many apples ?", " there are 4 apples ."])
  tiny_tok.save_tokenizer(tok, str(tmp_path))
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  # A checkpoint dir whose config.json points at remote code (as LLaDA2.0-mini's) must still work.
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada2_moe",
                                                    "auto_map": {"AutoConfig": "configuration_llada2_moe.X"}}))
  eos = hf.convert_tokens_to_ids(tiny_tok.EOS_TOKEN)
  ex = _example(max_seq_len=32, eos_id=eos, tokenizer=str(tmp_path), noise_low=0.0, noise_high=0.0)
  messages = [{"role": "user", "content": "how many apples ?"},
              {"role": "assistant", "content": " there are 4 apples ."}]
  out = ex(0, (0, _row(messages=messages, flag=True)))
  prompt = hf.encode(tiny_tok.render_prompt("how many apples ?"), add_special_tokens=False)
  answer = hf.encode(" there are 4 apples .", add_special_tokens=False) + [eos]
  n = len(prompt) + len(answer)
  np.testing.assert_array_equal(out["clean_ids"][:n], prompt + answer)
  assert (out["labels"][:len(prompt)] == IGNORE_INDEX).all()
  np.testing.assert_array_equal(out["labels"][len(prompt):n], answer)
  assert out["flags"]


def _data_cfg(path, **kw):
  return dataclasses.replace(DataSection(train_path=str(path), max_seq_len=16, read_threads=1, prefetch=2), **kw)


def _write_rows(path, n, bad=()):
  with open(path, "w") as f:
    for i in range(n):
      f.write("{broken\n" if i in bad else json.dumps({"input_ids": [i, i + 1, 7, 8], "prompt_lengths": 1}) + "\n")


def _rows_of(ds):
  return [tuple(b["clean_ids"][:, 0]) for b in ds]


def test_dataset_shards_the_global_order_across_processes_and_skips_bad_rows(tmp_path):
  path = tmp_path / "d.jsonl"
  _write_rows(path, 24, bad={5})
  kw = dict(epochs=2, eos_id=EOS, mask_id=MASK)
  flat = lambda ds: [r for batch in _rows_of(ds) for r in batch]
  single = flat(make_dataset(_data_cfg(path), rows_per_process=1, **kw))
  good = sorted(set(range(24)) - {5})
  assert sorted(single[:23]) == good and sorted(single[23:]) == good  # each epoch: every good row once
  assert single[:23] != single[23:]  # reshuffled per epoch
  parts = [flat(make_dataset(_data_cfg(path), rows_per_process=1, process_index=p, process_count=2, **kw))
           for p in range(2)]
  assert parts[0] and parts[1] and sorted(parts[0] + parts[1]) == sorted(single)
  assert flat(make_dataset(_data_cfg(path), rows_per_process=1, **kw)) == single  # deterministic
  assert flat(make_dataset(_data_cfg(path, seed=1), rows_per_process=1, **kw)) != single
  batched = list(make_dataset(_data_cfg(path), rows_per_process=4, **kw))
  assert len(batched) == 46 // 4 and batched[0]["clean_ids"].shape == (4, 16)
