"""`evaluate.py` end to end on DMax-tiny: samples and results equal decoding the same prompts with `decode.py`,
a killed run resumes without redoing finished samples, a directory of another run is refused; benchmark files
are read in their public formats and the task prompts are DMax's."""

import contextlib
import gzip
import io
import json
import os

import pytest

from dmax_jax.cli import decode as decode_cli
from dmax_jax.cli import evaluate as evaluate_cli
from dmax_jax.errors import InputError
from dmax_jax.evaluation import gsm8k, runner, sources, tasks
from dmax_jax.experiments.tiny_dmax import task as tiny_task
from dmax_jax.tokenization import load_tokenizer

CKPT = decode_cli.DEFAULT_CKPT
GEN = "64"


def _evaluate(*args) -> int:
  with contextlib.redirect_stdout(io.StringIO()):
    return evaluate_cli.main(["--quiet", "--ckpt", CKPT, *args])


def _decode_json(*args) -> dict:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert decode_cli.main(["--ckpt", CKPT, "--json", *args]) == 0
  return json.loads(out.getvalue().strip().splitlines()[-1])


def _samples(out_dir) -> list[dict]:
  with open(os.path.join(out_dir, runner.SAMPLES)) as f:
    return sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])


def _results(out_dir) -> dict:
  with open(os.path.join(out_dir, "results.json")) as f:
    return json.load(f)


def _without_eos(ids):
  eos = load_tokenizer(CKPT).convert_tokens_to_ids("<|endoftext|>")
  return [t for t in ids if t != eos]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("eval") / "tiny")
  assert _evaluate("--task", "tiny", "--limit", "8", "--batch-size", "8", "--output", out) == 0
  return out


def test_tiny_task_matches_decode_py(tiny_run, tmp_path):
  samples = _samples(tiny_run)
  records = tasks.get_task("tiny").records()[:8]
  batch = tmp_path / "prompts.txt"
  batch.write_text("".join(r["question"] + "\n" for r in records))
  decoded = _decode_json("--batch-file", str(batch), "--batch-size", "3", "--gen-length", GEN, "--threshold", "0.5")
  tok = load_tokenizer(CKPT)
  assert [s["nfe"] for s in samples] == decoded["nfe"]
  assert [s["response"] for s in samples] == [tok.decode(_without_eos(g), skip_special_tokens=True)
                                             for g in decoded["generated"]]
  expected = sum(tiny_task.is_correct(t, int(r["answer"])) for t, r in zip(decoded["text"], records)) / 8
  results = _results(tiny_run)
  assert results["strict"]["accuracy"] == expected and results["n"] == 8
  assert results["tpf_ratio_of_sums"] == pytest.approx(sum(decoded["num_tokens"]) / sum(decoded["nfe"]))
  assert results["tpf_mean_of_ratios"] == pytest.approx(sum(decoded["tpf"]) / 8)


def test_killed_run_resumes_without_redoing_finished_samples(tiny_run, tmp_path, monkeypatch):
  out = str(tmp_path / "resumed")
  os.makedirs(out)
  for name in (runner.RUN, runner.SAMPLES):
    with open(os.path.join(tiny_run, name)) as src, open(os.path.join(out, name), "w") as dst:
      text = src.read()
      if name == runner.SAMPLES:  # a kill after 5 samples, in the middle of writing the sixth
        lines = text.splitlines(keepends=True)
        text = "".join(lines[:5]) + lines[5][:40]
      dst.write(text)
  decoded_rows = []
  real_generate = runner.generate
  monkeypatch.setattr(runner, "generate", lambda cfg, v, prompts, *a, **k: decoded_rows.append(
      (len(prompts), k["queue_length"])) or real_generate(cfg, v, prompts, *a, **k))
  assert _evaluate("--task", "tiny", "--limit", "8", "--batch-size", "8", "--output", out) == 0
  # one call: the 3 unfinished samples, in a queue padded with empty rows to the run's one compiled length
  assert decoded_rows == [(3, 8 * runner.BATCHES_PER_CALL)]
  strip = lambda samples: [{k: v for k, v in s.items() if k != "seconds"} for s in samples]
  assert strip(_samples(out)) == strip(_samples(tiny_run))
  for key in ("accuracy", "strict", "lenient", "tpf_mean_of_ratios", "tpf_ratio_of_sums", "mean_nfe"):
    assert _results(out)[key] == _results(tiny_run)[key]


def test_directory_of_another_run_is_refused(tiny_run, tmp_path, capsys):
  assert evaluate_cli.main(["--quiet", "--task", "tiny", "--limit", "2", "--threshold", "0.9",
                            "--output", tiny_run]) == 2
  assert "holds an evaluation with other settings (options)" in capsys.readouterr().err
  other = tmp_path / "other.jsonl"  # same task and settings, other records
  other.write_text(json.dumps({"question": "Tom has 3 eggs. How many eggs does Tom have now?", "answer": "3"}) + "\n")
  assert evaluate_cli.main(["--quiet", "--task", "tiny", "--data", str(other), "--output", tiny_run]) == 2
  assert "holds another prompt for record 0" in capsys.readouterr().err


def test_torn_last_line_is_dropped_even_when_it_parses(tmp_path):
  path = tmp_path / runner.SAMPLES
  path.write_text('{"doc_id": 0}\n{"doc_id": 1}\n{"doc_id": 2}')  # killed before the last newline
  assert sorted(runner.read_samples(str(path))) == [0, 1]
  assert path.read_text() == '{"doc_id": 0}\n{"doc_id": 1}\n'
  path.write_text('{"doc_id": 0}\n{oops\n{"doc_id": 2}\n')
  with pytest.raises(InputError, match="line 2 is not JSON"):
    runner.read_samples(str(path))


def test_local_gsm8k_file_matches_decode_py(tmp_path):
  records = [{"question": "Mia has 9 pens. She buys 2 boxes with 3 pens each. How many pens does Mia have now?",
              "answer": "She buys 2 * 3 = 6 pens.\n9 + 6 = 15\n#### 15"},
             {"question": "Leo has 20 cards. He gives 5 cards to Sam. How many cards does Leo have now?",
              "answer": "20 - 5 = 15\n#### 15"}]
  data = tmp_path / "test.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = str(tmp_path / "gsm8k")
  assert _evaluate("--task", "gsm8k", "--data", str(data), "--gen-length", GEN, "--output", out) == 0
  samples = _samples(out)
  prompt = f"Question: {records[0]['question']}\nLet's think step by step\nAnswer:"
  assert samples[0]["prompt"] == prompt
  decoded = _decode_json("--prompt", prompt, "--gen-length", GEN, "--threshold", "0.5")
  assert samples[0]["nfe"] == decoded["nfe"]
  assert samples[0]["response"] == load_tokenizer(CKPT).decode(_without_eos(decoded["generated"]),
                                                               skip_special_tokens=True)
  for sample, record in zip(samples, records):
    assert sample["scores"]["flexible-extract"] == gsm8k.strict_correct(sample["response"], record["answer"])
  results = _results(out)
  assert results["strict"]["accuracy"] == sum(s["scores"]["flexible-extract"] for s in samples) / 2


def test_records_in_public_formats(tmp_path):
  rows = [{"question": "q1", "answer": "#### 1"}, {"question": "q2", "answer": "#### 2"}]
  (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in rows))
  with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  (tmp_path / "a.json").write_text(json.dumps(rows))
  (tmp_path / "math").mkdir()
  for i, r in enumerate(rows):
    (tmp_path / "math" / f"{i}.json").write_text(json.dumps(r))
  for name in ("a.jsonl", "a.jsonl.gz", "a.json", "math"):
    assert sources.read_records(str(tmp_path / name)) == rows
  (tmp_path / "bad.jsonl").write_text('{"question": 1}\n{oops\n')
  with pytest.raises(InputError, match="line 2 is not JSON"):
    sources.read_records(str(tmp_path / "bad.jsonl"))
  with pytest.raises(InputError, match=r"record 0 lacks problem, solution, which task 'math500' needs"):
    tasks.get_task("math500").records(str(tmp_path / "a.jsonl"))
  with pytest.raises(InputError, match="no such file"):
    sources.read_records(str(tmp_path / "missing.jsonl"))


def test_prompts_are_dmax_evaluation_prompts():
  assert tasks.get_task("gsm8k").prompt({"question": "Q?"}) == "Question: Q?\nLet's think step by step\nAnswer:"
  assert tasks.get_task("asdiv").prompt({"body": "B.", "question": "Q?"}) == \
      "Question: B. Q?\nLet's think step by step\nAnswer:"
  assert tasks.get_task("math500").prompt({"problem": "P"}) == \
      "P\nLet's think step by step, and put your final answer within \\boxed{}."
  fence = "Please enclose your code within delimiters as follows:\n```python\n# YOUR CODE HERE\n```\n\n"
  assert tasks.get_task("humaneval").prompt({"prompt": "def f():\n"}) == (
      "Write a solution to the following problem and make sure that it passes the tests:\n```python\n"
      "def f():\n\n```\n\n" + fence)
  assert tasks.get_task("mbpp").prompt({"prompt": "Add.", "test_list": ["assert a(1) == 2", "assert a(2) == 3"]}) == (
      "You are an expert Python programmer, and here is your task: Add. Your code should pass these tests:\n\n"
      "assert a(1) == 2\nassert a(2) == 3\n\n" + fence)


def test_code_tasks_score_by_execution():
  problem = tasks.get_task("humaneval").records()[0]
  good = f"Here it is:\n```python\n{problem['prompt']}{problem['canonical_solution']}```\n"
  assert tasks.get_task("humaneval").score(good, problem) == {"pass@1": True}
  assert tasks.get_task("humaneval").score("```python\ndef nope(): pass\n```", problem) == {"pass@1": False}
  mbpp = {"task_id": 1, "test_imports": ["import math"], "test_list": ["assert root(9) == 3"]}
  # DMax keeps only imports, functions and classes: the wrong example assert after the function is dropped
  right = "```python\ndef root(x):\n    return math.isqrt(x)\n\nassert root(4) == 3\n```"
  assert tasks.get_task("mbpp").score(right, mbpp) == {"pass@1": True}
  assert tasks.get_task("mbpp_plus").score(right.replace("isqrt(x)", "isqrt(x) + 1"), mbpp) == {"pass@1": False}


def test_unknown_task_and_missing_data_are_one_line_errors(capsys):
  assert evaluate_cli.main(["--task", "gsm9k"]) == 2
  assert evaluate_cli.main(["--task", "gsm8k", "--data", "/nonexistent/test.jsonl"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("error: unknown task 'gsm9k'; choose from gsm8k, asdiv,")
  assert err[1] == "error: /nonexistent/test.jsonl: no such file"


def test_math_tasks_score_with_three_scorers():
  record = {"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}"}
  math500 = tasks.get_task("math500")
  boxed = "We halve 1, so the answer is $\\boxed{0.5}$."
  # lm-eval's exact_match reads only "Final Answer: The final answer is ..."; math_verify and the lenient
  # scorer find the boxed 0.5 = 1/2.
  assert math500.score(boxed, record) == {"exact_match": False, "math_verify": True, "lenient": True}
  assert math500.extract(boxed) == "0.5" and math500.strict == "math_verify"
  stated = "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.\n"
  assert math500.score(stated, record)["exact_match"] is True
  assert set(math500.score("So it is $\\boxed{2}$.", record).values()) == {False}
  algebra = {"problem": "x + 1 = 3?", "solution": "So $x = \\boxed{2}$."}
  assert tasks.get_task("minerva_algebra").score("Thus $x=\\boxed{2}$.", algebra)["lenient"] is True


def test_readme_harness_table_is_the_stored_results():
  """The README's DMax-tiny evaluation table is `summary.markdown` of the shipped results.json files, whose
  numbers are the pipeline's for the same points (docs/tiny_dmax/points.json)."""
  from dmax_jax.evaluation import summary
  root = os.path.join(os.path.dirname(__file__), "..")
  names = ("tiny-spd-0.5", "tiny-threshold-0.95", "tiny-threshold-0.7")
  results = []
  for name in names:
    with open(os.path.join(root, "docs", "tiny_dmax", "harness", f"{name}.json")) as f:
      results.append(json.load(f))
  with open(os.path.join(root, "README.md")) as f:
    stated = f.read().split("<!-- harness-table -->\n")[1].split("<!-- /harness-table -->")[0]
  assert stated == summary.markdown(results)
  with open(os.path.join(root, "docs", "tiny_dmax", "points.json")) as f:
    points = {(p["model"], p["decoder"], p["threshold"]): p for p in json.load(f)}
  for r in results:
    point = points[("DMax-tiny", r["options"]["mode"], r["threshold"])]
    assert (r["strict"]["accuracy"], r["n"]) == (point["accuracy"], point["n"])
    assert r["tpf_ratio_of_sums"] == pytest.approx(point["tpf"])


def test_sampled_answers_do_not_depend_on_batching(tmp_path):
  """With temperature > 0, record i samples with fold_in(key(seed), i): batch 4 gives batch 1's samples."""
  strip = lambda samples: [(s["response"], s["nfe"]) for s in samples]
  runs = []
  for batch in ("4", "1"):
    out = str(tmp_path / batch)
    assert _evaluate("--task", "tiny", "--limit", "4", "--batch-size", batch, "--temperature", "0.8",
                     "--seed", "3", "--output", out) == 0
    runs.append(strip(_samples(out)))
  assert runs[0] == runs[1]
