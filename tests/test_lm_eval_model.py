"""lm-evaluation-harness on this decoder (`[eval]` extra, not installed by `[test]`): a GSM8K task YAML in
DMax's form, run by lm-eval's own `simple_evaluate` with `DMaxLM` on DMax-tiny, gives the responses and the
flexible-extract accuracy of `evaluate.py` on the same records."""

import json

import pytest

from dmax_jax.cli.decode import DEFAULT_CKPT
from dmax_jax.decoding import DecodeOptions
from dmax_jax.evaluation import runner, tasks

pytestmark = pytest.mark.slow  # needs the [eval] extra; lm-eval's task machinery takes ~20 s to start


@pytest.fixture(scope="module")
def lm_eval():
  return pytest.importorskip("lm_eval")

TASK_YAML = r"""task: gsm8k_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\nLet's think step by step\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\$", "(?s).*#### ", "\\.$", "(?<=\\d)\\.0+(?!\\d)"]
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
num_fewshot: 0
filter_list:
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
"""


def test_cut_at_stop_strings(lm_eval):
  from dmax_jax.evaluation.lm_eval_model import cut_at
  assert cut_at("a Question: b", ["Question:", "</s>"]) == "a "
  assert cut_at("abc", []) == "abc" and cut_at("abc", ["x"]) == "abc" and cut_at("abc", None) == "abc"
  assert cut_at("a Question: b", "Question:") == "a "  # one stop string, not its characters


def test_lm_eval_task_on_dmax_tiny_matches_evaluate(lm_eval, tmp_path):
  from dmax_jax.evaluation.lm_eval_model import DMaxLM, cut_at
  records = [{"question": p["question"], "answer": f"#### {p['answer']}"} for p in tasks.get_task("tiny").records()[:4]]
  data = tmp_path / "test.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in records))
  (tmp_path / "gsm8k_local.yaml").write_text(TASK_YAML.format(data=data))
  lm = DMaxLM(ckpt=DEFAULT_CKPT, batch_size=4, gen_length=64, threshold=0.5)
  out = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_local"], apply_chat_template=True,
                                task_manager=lm_eval.tasks.TaskManager(include_path=str(tmp_path)))
  lm_responses = [s["resps"][0][0] for s in sorted(out["samples"]["gsm8k_local"], key=lambda s: s["doc_id"])]

  ours = runner.evaluate(tasks.get_task("gsm8k"), records, runner.Model(lm.model.config, lm.model.variables,
                                                                         lm.model.tokenizer, DEFAULT_CKPT),
                         DecodeOptions(gen_length=64, threshold=0.5), str(tmp_path / "ours"), 4, progress=False)
  with open(tmp_path / "ours" / runner.SAMPLES) as f:
    samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
  assert lm_responses == [cut_at(s["response"], ["Question:", "</s>", "<|im_end|>"]) for s in samples]
  assert out["results"]["gsm8k_local"]["exact_match,flexible-extract"] == ours["accuracy"]["flexible-extract"]
  assert lm.tpf() == pytest.approx((ours["tpf_mean_of_ratios"], ours["tpf_ratio_of_sums"]))
