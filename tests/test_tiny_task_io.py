"""tiny-DMax model config, JSONL writers, scoring, table and plot."""

import json

import pytest

from dmax_jax import ModelConfig
from dmax_jax.experiments.tiny_dmax import data, evaluation, model_config, task, tokenizer


@pytest.fixture(scope="module")
def tok():
  return tokenizer.build_tokenizer()


def test_tiny_model_config_round_trips_and_has_the_architecture(tok, tmp_path):
  cfg = model_config.tiny_model_config(tok.get_vocab_size(), **tokenizer.special_ids(tok))
  path = model_config.write_hf_config(cfg, str(tmp_path))
  hf = json.load(open(path))
  assert hf["model_type"] == "llada2_moe" and hf["pad_token_id"] == hf["eos_token_id"]
  assert ModelConfig.from_json(str(tmp_path)) == cfg
  assert cfg.vocab_size >= tok.get_vocab_size() and cfg.vocab_size % 16 == 0
  assert cfg.num_dense_layers == 1 and cfg.num_moe_layers >= 2
  assert (cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok) == (4, 2, 2)
  assert cfg.rotary_dim < cfg.head_dim and cfg.use_qk_norm
  # Hand count of the default (hidden 192, 4 layers: 1 dense of width 512, 3 MoE with 16 experts of width 64;
  # 4 query / 2 KV heads of dim 48; vocab 352).
  assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.vocab_size) == (192, 4, 48, 352)
  h, d, v = 192, 48, 352
  attn = h * (4 + 2 + 2) * d + 4 * d * h + 2 * d + 2 * h
  dense = attn + 3 * h * 512
  moe = attn + 16 * h + 16 * 3 * h * 64 + 3 * h * 64
  expected_total = 2 * v * h + dense + 3 * moe + h
  counts = model_config.parameter_summary(cfg)
  assert counts["total"] == expected_total
  assert counts["active"] == expected_total - 3 * 14 * 3 * h * 64
  assert 1_000_000 <= counts["total"] <= 5_000_000


def test_sft_rows_round_trip(tmp_path):
  problems = task.generate_split("train", 5)
  rows = data.sft_rows(problems, seed=0)
  assert all(r["flag"] is False for r in rows)
  assert [r["messages"][0]["content"] for r in rows] == [p.prompt for p in problems]
  assert all(task.is_correct(r["messages"][1]["content"], p.answer) for r, p in zip(rows, problems))
  path = str(tmp_path / "sub" / "rows.jsonl")
  data.write_jsonl(path, rows)
  assert data.read_jsonl(path) == rows
  assert sum(1 for _ in open(path)) == len(rows)


def test_evaluate_scores_answers_and_aggregates_tpf():
  problems = task.generate_split("test", 4)
  texts = [f"x. The answer is {p.answer}." for p in problems[:3]] + ["The answer is -1."]
  point = evaluation.evaluate("base", "threshold", 0.9, problems, texts, tokens=[10, 20, 30, 40], nfe=[10, 10, 5, 5])
  assert point.accuracy == 0.75
  assert point.tpf == pytest.approx(100 / 30)
  assert point.mean_row_tpf == pytest.approx((1 + 2 + 6 + 8) / 4)
  assert (point.mean_tokens, point.mean_nfe, point.n) == (25, 7.5, 4)
  with pytest.raises(ValueError):
    evaluation.evaluate("m", "d", 0.5, problems, texts[:2], [1, 1], [1, 1])


def _point(model, decoder, threshold, acc, tpf):
  return evaluation.EvalPoint(model, decoder, threshold, 100, acc, tpf, tpf, 50.0, 50.0 / tpf)


def test_table_plot_and_headline(tmp_path):
  points = [_point("base", "threshold", t, a, f) for t, a, f in ((0.95, 0.90, 1.5), (0.7, 0.91, 2.0), (0.3, 0.5, 4.0))]
  points += [_point("DMax-tiny", "spd", t, a, f) for t, a, f in ((0.9, 0.92, 2.5), (0.5, 0.895, 5.0), (0.0, 0.6, 8.0))]
  table = evaluation.markdown_table(points)
  lines = table.strip().splitlines()
  assert len(lines) == 2 + len(points)
  assert lines[2].startswith("| base | threshold | 0.95 | 90.0 | 1.50 |")
  assert lines[-1].startswith("| DMax-tiny | spd | 0 | 60.0 | 8.00 |")
  md = evaluation.write_markdown(str(tmp_path / "t.md"), points)
  assert open(md).read() == table
  h = evaluation.headline(points, base=("base", "threshold"), dmax=("DMax-tiny", "spd"))
  assert h["base"]["threshold"] == 0.7 and h["dmax"]["threshold"] == 0.5
  assert h["tpf_ratio"] == pytest.approx(2.5) and h["accuracy_drop"] == pytest.approx(0.015)
  png = evaluation.plot_accuracy_vs_tpf(points, str(tmp_path / "plot.png"))
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert not list(tmp_path.glob("*.tmp*"))
  evaluation.save_points(str(tmp_path / "points.json"), points)
  assert evaluation.load_points(str(tmp_path / "points.json")) == points


def test_stats_report_small(capsys):
  from dmax_jax.experiments.tiny_dmax import stats
  stats.main(["--train", "200", "--validation", "20", "--test", "20", "--seed", "1"])
  out = capsys.readouterr().out
  assert "- train: 200 problems, 200 distinct" in out
  assert out.count(": 0\n") >= 3  # the three pairwise overlaps
  assert "exact round trips: 400 / 400; texts with unknown tokens: 0" in out
  with pytest.raises(SystemExit):
    stats.main(["--test", "0"])
