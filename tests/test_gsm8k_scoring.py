"""GSM8K scoring on hand-made responses: lm-eval's strict filters and DMax's lenient numeric scorer."""

import pytest

from dmax_jax.evaluation import gsm8k

REFERENCE = "She has 3 * 4 = 12 apples.\nShe sells 2, so 12 - 2 = 10 remain.\n#### 1,000"


@pytest.mark.parametrize("text, want", [
    ("1,200.50", "2401/2"), ("$18.00", "18"), ("6/8", "3/4"), ("12%", "12"), ("-7.", "-7"), ("\\boxed{42}", "42"),
    ("**5**", "5"), ("1/0", None), ("seven", None), ("", None),
])
def test_canonical_number(text, want):
  assert gsm8k.canonical_number(text) == want


def test_boxed_contents_keep_nested_braces():
  assert gsm8k.boxed_contents(r"so \boxed{\frac{1}{2}} and \fbox{ 3 } then \boxed{") == [r"\frac{1}{2}", "3"]


@pytest.mark.parametrize("response, strict_match, flexible", [
    ("Step... The answer is 1,000.", False, True),
    ("#### 1000\nThat is all, 7 times.", True, False),   # flexible takes the *last* number
    ("The answer is $1,000.00", False, True),            # trailing .00 and $ are ignored
    ("The answer is 100", False, False),
])
def test_strict_filters(response, strict_match, flexible):
  assert gsm8k.strict_correct(response, REFERENCE, "strict-match") is strict_match
  assert gsm8k.strict_correct(response, REFERENCE, "flexible-extract") is flexible


@pytest.mark.parametrize("response, correct", [
    ("3 * 4 = 12 and 12 - 2 = 10.\nThe answer is 1000 apples.", True),
    ("The answer is 1000 apples, 2 of them red.", False),  # the last number of the last line: 2
    ("Answer: 999\nSo 1000", True),                        # the second candidate counts (top-2)
    ("Answer: 999\nAnswer: 998\nSo 1000", False),          # the third does not
    ("Final Answer: $1,000\n\nextra words 5", True),
    (r"Thus the total is \boxed{1000}.", True),
    ("The answer is 1000.5", False),
    ("Wait, 10 is wrong. Wait, that is wrong. Wait, maybe 1000 is false. I am stuck in a loop", False),  # dropped
    ("", False),
])
def test_lenient_scorer(response, correct):
  assert gsm8k.lenient_correct(response, REFERENCE) is correct


def test_unstable_response_is_dropped_unless_it_ends_cleanly():
  unstable = "wait wrong wait wrong wait stuck loop glitch. "
  assert gsm8k.response_candidates(unstable + "so 1000") == [] and gsm8k.unstable(unstable + "so 1000")
  assert not gsm8k.unstable("No number here.") and gsm8k.response_candidates("No number here.") == []
  clean_end = "\n\n" + "Adding the boxes of each shelf together gives the total. " * 5 + "\nThe final answer is 1000"
  assert gsm8k.response_candidates(unstable * 10 + clean_end)[0] == "1000"
  assert gsm8k.reference_candidates(REFERENCE) == ["1000"]
