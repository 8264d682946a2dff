"""The tiny-DMax task generator, answer checker and tokenizer."""

import random
import re

import pytest

from dmax_jax.experiments.tiny_dmax import task, tokenizer

_EQ_RE = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")


def _check_arithmetic(solution: str) -> list[int]:
  """Evaluates every "a op b = c" of a solution independently of the generator; returns the results."""
  results = []
  for lhs, rhs in _EQ_RE.findall(solution):
    value = eval(lhs.replace("/", "//"))  # noqa: S307 - digits and + - * / only (regex above)
    if "/" in lhs:
      a, b = (int(t) for t in lhs.split(" / "))
      assert a % b == 0, f"non-integer share in {solution!r}"
    assert value == int(rhs), f"wrong step {lhs} = {rhs} in {solution!r}"
    results.append(value)
  return results


def test_generation_is_deterministic_and_prefix_stable():
  a = task.generate_split("test", 50, seed=3)
  assert a == task.generate_split("test", 50, seed=3)
  assert a[:20] == task.generate_split("test", 20, seed=3)
  assert [p.key for p in a] != [p.key for p in task.generate_split("test", 50, seed=4)]
  p = a[0]
  assert task.solution_variants(p, 3, seed=1) == task.solution_variants(p, 3, seed=1)


def test_splits_are_disjoint_and_deduplicated():
  splits = task.make_splits({"train": 3000, "validation": 300, "test": 300}, seed=0)
  keys = {name: [p.key for p in ps] for name, ps in splits.items()}
  for name, ks in keys.items():
    assert len(set(ks)) == len(ks), f"duplicates in {name}"
    assert all(task.split_of(p) == name for p in splits[name])
  assert not set(keys["train"]) & set(keys["test"])
  assert not set(keys["train"]) & set(keys["validation"])
  assert not set(keys["validation"]) & set(keys["test"])
  # The prompt text is a function of the key, so no prompt is shared either.
  prompts = {name: {p.prompt for p in ps} for name, ps in splits.items()}
  assert not prompts["train"] & prompts["test"]


def test_solutions_are_correct_chains_ending_in_the_answer():
  cfg = task.TaskConfig()
  for p in task.generate_split("validation", 200, seed=1):
    assert cfg.min_events <= len(p.events) <= cfg.max_events
    for sol in task.solution_variants(p, 4, seed=2):
      results = _check_arithmetic(sol)
      assert len(results) >= 2  # gains_losses folds several events into one sum
      assert results[-1] == p.answer
      assert all(0 <= r <= cfg.max_value for r in results)
      assert sol.endswith(f"The answer is {p.answer}.")
      assert task.extract_answer(sol) == p.answer
      assert str(p.start) in sol


def test_problems_have_incompatible_solution_orders():
  """Most problems have several variants, and many have variants whose first step differs in result."""
  problems = task.generate_split("train", 200, seed=0)
  n_multi = n_reordered = 0
  for p in problems:
    sols = task.solution_variants(p, 6, seed=0)
    n_multi += len(sols) >= 3
    n_reordered += len({_check_arithmetic(s)[0] for s in sols}) > 1
  assert n_multi >= 190
  assert n_reordered >= 60


def test_each_strategy_is_reachable():
  rng = random.Random(0)
  seen = set()
  for p in task.generate_split("train", 100):
    for strategy in task.STRATEGIES:
      try:
        task.sample_solution(p, rng, strategy=strategy)
        seen.add(strategy)
      except ValueError:
        assert strategy == "gains_losses"
  assert seen == set(task.STRATEGIES)


@pytest.mark.parametrize("text, expected", [
    ("So 3 + 4 = 7. The answer is 7.", 7),
    ("The answer is 42", 42),
    ("The answer is 12. The answer is 5.", 12),
    ("the answer is 3.", None),
    ("The answer is .", None),
    ("", None),
    ("The answer is -4.", -4),
])
def test_extract_answer(text, expected):
  assert task.extract_answer(text) == expected


def test_is_correct():
  assert task.is_correct("... The answer is 21.", 21)
  assert not task.is_correct("... The answer is 2 1.", 21)
  assert not task.is_correct("no answer", 21)


def test_bad_config_rejected():
  with pytest.raises(ValueError):
    task.TaskConfig(min_events=3, max_events=2)
  with pytest.raises(ValueError):
    task.TaskConfig(test_fraction=0.6, validation_fraction=0.5)
  with pytest.raises(ValueError):
    task.generate_split("dev", 1)


@pytest.fixture(scope="module")
def tok():
  return tokenizer.build_tokenizer()


def test_tokenizer_round_trip_and_small_vocab(tok):
  assert 100 <= tok.get_vocab_size() <= 400
  for p in task.generate_split("test", 300, seed=5):
    for text in [p.prompt] + task.solution_variants(p, 3, seed=5):
      enc = tok.encode(text)
      assert tokenizer.UNK_TOKEN not in enc.tokens
      assert tok.decode(enc.ids) == text
  harder = task.TaskConfig(**task.HARDER)  # same templates, larger numbers: same vocabulary
  for p in task.generate_split("test", 100, seed=5, cfg=harder):
    assert tokenizer.UNK_TOKEN not in tok.encode(p.prompt + " " + task.solution_for(p, cfg=harder)).tokens
  assert tok.encode("8 + 14 = 22, so 99 is 0.").tokens == ["8", " +", " 14", " =", " 22", ",", " so", " 99", " is", " 0", "."]
  assert tok.encode("The answer is 105.").tokens[-3:] == [" 10", "5", "."]  # past 99: chunks, still exact
  assert tok.decode(tok.encode("Mia has 1005 pens, so 07.").ids) == "Mia has 1005 pens, so 07."


def test_tokenizer_digit_by_digit_option():
  digits = tokenizer.build_tokenizer(number_chunk=1)
  assert digits.encode("The answer is 105.").tokens[-4:] == [" 1", "0", "5", "."]
  p = task.generate_split("test", 1)[0]
  text = p.prompt + " " + task.solution_for(p)
  assert digits.decode(digits.encode(text).ids) == text
  assert digits.get_vocab_size() < tokenizer.build_tokenizer().get_vocab_size()
  with pytest.raises(ValueError):
    tokenizer.build_tokenizer(number_chunk=0)


def test_tokenizer_special_ids(tok):
  ids = tokenizer.special_ids(tok)
  assert ids["pad_token_id"] == ids["eos_token_id"] == tok.token_to_id(tokenizer.EOS_TOKEN)
  assert ids["mask_token_id"] == tok.token_to_id(tokenizer.MASK_TOKEN) != ids["eos_token_id"]
  assert tok.encode("<|user|>Mia<|mask|><|endoftext|>").tokens == ["<|user|>", "Mia", "<|mask|>", "<|endoftext|>"]


def test_auto_tokenizer_loads_with_chat_template(tok, tmp_path):
  transformers = pytest.importorskip("transformers")
  tokenizer.save_tokenizer(tok, str(tmp_path))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ids = tokenizer.special_ids(tok)
  assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (
      ids["eos_token_id"], ids["pad_token_id"], ids["mask_token_id"])
  p = task.generate_split("test", 1)[0]
  answer = task.solution_for(p)
  user = [{"role": "user", "content": p.prompt}]
  prompt_text = hf.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
  assert prompt_text == tokenizer.render_prompt(p.prompt)
  full_text = hf.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
  assert full_text == prompt_text + answer + tokenizer.EOS_TOKEN
  prompt_ids = hf(prompt_text, add_special_tokens=False)["input_ids"]
  full_ids = hf(full_text, add_special_tokens=False)["input_ids"]
  assert full_ids[:len(prompt_ids)] == prompt_ids
  assert full_ids == tok.encode(full_text).ids
  assert full_ids[-1] == hf.eos_token_id
  assert hf.decode(full_ids[len(prompt_ids):-1]) == answer
  with pytest.raises(Exception, match="unknown chat role"):
    hf.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)
