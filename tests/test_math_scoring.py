"""MATH-500 / Minerva-Algebra and ASDiv scoring on hand-made responses: lm-eval's minerva exact_match and
math_verify, DMax's lenient val_math / val_algebra / val_asdiv rules."""

import concurrent.futures
import importlib
import sys
import time

import pytest

from dmax_jax.evaluation import gsm8k
from dmax_jax.evaluation import math_answers as ma

HALF_SOLUTION = r"Dividing both sides by $4$ gives $x = \boxed{\frac12}$."


def final_answer(answer: str) -> str:
  """A response in the Minerva format that lm-eval's exact_match reads."""
  return f"We simplify step by step.\nFinal Answer: The final answer is {answer}. I hope it is correct."


@pytest.mark.parametrize("solution, want", [
    (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),                  # nested braces kept
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"The answer is $\boxed 5$.", "5"),                                 # `\boxed 5`: up to the next `$`
    (r"Thus \boxed{3} at first, but really \boxed{4}. Done.", "4"),      # the last box; trailing text ignored
    (r"\boxed{\frac12}", r"\frac{1}{2}"),                                # shorthand expanded
    (r"\boxed{12\text{ cm}}", "12"),
    (r"\boxed{30^\circ}", "30"),
    (r"\boxed{\$18.50}", "18.50"),
    (r"\boxed{x=3}", "3"),
    (r"\boxed{1,000}", "1000"),
    (r"18 \text{ cm}", "18"),                                            # a bare answer field, no box
    (r"\fbox{7}", "7"),
])
def test_reference_answer(solution, want):
  assert ma.reference_answer(solution) == want


@pytest.mark.parametrize("response, want", [
    (final_answer(r"$\frac{1}{2}$"), r"$\frac{1}{2}$"),
    ("Final Answer: The final answer is $42$. I hope it is correct. Then some more words.", "$42$"),
    ("Final Answer: The final answer is $42$. ", "$42$"),  # the appended end sequence completes the phrase
    ("Final Answer: The final answer is $42$.", ma.INVALID_ANSWER),  # "$.I hope": no space before "I hope"
    ("Final Answer: The final answer is 42 I hope it is correct.", "4"),  # the unescaped `.` eats the "2"
    (r"The answer is $\boxed{42}$.", ma.INVALID_ANSWER),   # a box alone is no "Final Answer" phrase
    ("**Final Answer:** The final answer is 42. I hope it is correct.", ma.INVALID_ANSWER),
])
def test_unnormalized_answer(response, want):
  assert ma.unnormalized_answer(response) == want


@pytest.mark.parametrize("answer, reference, correct", [
    (r"$\dfrac{1}{2}$", r"\frac{1}{2}", True),
    ("$0.5$", r"\frac{1}{2}", True),       # sympy: 1/2 - 0.5 simplifies to 0
    ("$0.6$", r"\frac{1}{2}", False),
    (r"$12\text{ cm}$", "12", True),
    (r"\$18.50", "18.50", True),
    (r"$30^\circ$", "30", True),
    ("$x = 3$", "3", True),                # what follows the last `=`
    ("$x = 4$", "3", False),
    ("$(1,2)$", "(1,2)", False),           # sympy's LaTeX parser rejects tuples: never equal, even to themselves
])
def test_strict_exact_match(answer, reference, correct):
  assert ma.strict_correct(final_answer(answer), reference) is correct


def test_strict_needs_the_final_answer_phrase():
  reference = ma.reference_answer(HALF_SOLUTION)
  assert ma.strict_correct(r"so $x = \boxed{\frac{1}{2}}$", reference) is False
  assert ma.strict_correct(final_answer(r"$\frac{1}{2}$"), reference) is True


def test_strict_time_limit_cannot_be_swallowed(monkeypatch):
  import sympy
  response = final_answer("$0.5$")
  assert ma.strict_correct(response, r"\frac{1}{2}") is True  # also warms the LaTeX parser up
  started = []

  def stubborn_simplify(expression):
    started.append(time.monotonic())
    while time.monotonic() < started[0] + 3:
      try:
        time.sleep(0.01)
      except Exception:  # as sympy's own code may do
        pass
    return 0

  monkeypatch.setattr(sympy, "simplify", stubborn_simplify)
  monkeypatch.setattr(ma, "STRICT_TIMEOUT_S", 0.5)
  assert ma.strict_correct(response, r"\frac{1}{2}") is False  # out of time: not equal
  assert started and time.monotonic() - started[0] < 1.5


def test_dmax_yaml_filters_reduce_the_response_to_a_number():
  response = final_answer("$5$")
  assert ma.lm_eval_filtered(response, "flexible-extract") == "$5$."  # the last match of `[$0-9.,]{2,}`
  assert ma.lm_eval_filtered(response, "strict-match") == "[invalid]"  # no "#### "
  assert ma.strict_correct(response, "5") is True
  assert ma.strict_correct(response, "5", "flexible-extract") is False  # "5" holds no "Final Answer" phrase
  assert ma.math_verify_correct(response, r"$\boxed{5}$", "flexible-extract") is True
  assert ma.math_verify_correct(response, r"$\boxed{5}$", "strict-match") is False
  boxed_half = r"so $x = \boxed{\frac{1}{2}}$"
  assert ma.math_verify_correct(boxed_half, HALF_SOLUTION) is True
  assert ma.math_verify_correct(boxed_half, HALF_SOLUTION, "flexible-extract") is False  # it keeps the "2"


@pytest.mark.parametrize("response, correct", [
    (r"so $x=\boxed{\frac{1}{2}}$", True),
    (r"so $x = \boxed{\dfrac{1}{2}}$", True),
    ("The answer is 0.5", True),            # no box: math-verify reads the last expression
    (r"so $x = \boxed{0.6}$", False),
    (r"$\boxed{\frac12}$ was my first guess, but the answer is $\boxed{2}$.", False),  # the last box counts
])
def test_math_verify(response, correct):
  assert ma.math_verify_correct(response, HALF_SOLUTION) is correct


def test_math_verify_reads_a_bare_answer_field_whole():
  response = r"In polar form the point is $\boxed{\left(3, \frac{\pi}{2}\right)}$."
  assert ma.math_verify_correct(response, r"\left( 3, \frac{\pi}{2} \right)") is True
  assert ma.math_verify_correct(response, r"\left( 3, \frac{\pi}{4} \right)") is False


def test_math_verify_outside_the_main_thread():
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    assert pool.submit(ma.math_verify_correct, "x = 0.5", HALF_SOLUTION).result() is True
    assert pool.submit(ma.strict_correct, final_answer("$0.5$"), r"\frac{1}{2}").result() is True


@pytest.mark.parametrize("response, want", [
    (r"Hence $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"**Final Answer:** $\dfrac{3}{4}$", r"\frac{3}{4}"),
])
def test_lenient_first_candidate(response, want):
  assert ma.lenient_candidates(response)[0] == want


def test_lenient_candidates_of_plain_lines():
  # last lines first, each followed by its right-hand side, then the whole (short) response
  assert ma.lenient_candidates("The total is\n- 4 + 3 = 7") == [
      "4 + 3 = 7", "7", "The total is", "The total is - 4 + 3 = 7"]


@pytest.mark.parametrize("response, correct", [
    (r"Hence $x = \boxed{\dfrac{1}{2}}$.", True),
    ("So x = 0.5", True),                               # sympy: 0.5 = 1/2
    ("x = cos(0)/2", True),                             # sympy's plain-expression reading (math-verify misses it)
    (r"Hence $x = \boxed{\frac{1}{3}}$.", False),
    ("Adding the two parts:\nx = 1/4 + 1/4 = 1/2", True),  # no box: the last line's right-hand side
    (r"Thus \boxed{\frac{1}{2}}. I checked the arithmetic twice and it holds.", True),  # trailing text
    ("", False),
])
def test_lenient_math(response, correct):
  assert ma.lenient_correct(response, HALF_SOLUTION) is correct


def test_lenient_never_hands_code_to_sympify(monkeypatch):
  import sympy
  seen = []
  real_sympify = sympy.sympify
  monkeypatch.setattr(sympy, "sympify", lambda text: seen.append(text) or real_sympify(text))
  assert ma.lenient_correct("x = cos(0)/2", HALF_SOLUTION) is True
  assert "cos(0)/2" in seen
  assert ma.lenient_correct("x = ().__class__.__base__", HALF_SOLUTION) is False
  assert not any("__" in text for text in seen)


def test_lenient_skips_a_box_followed_by_substantial_text():
  response = (r"A first guess is \boxed{\frac{1}{2}}" + "\nBut the second equation changes the picture entirely,"
              " so the first guess cannot be right.\nRedoing the elimination carefully, one variable at a time,"
              " instead.\nThe corrected value follows.\nTherefore x is 3")
  assert len(response) > 200  # so the whole response is no candidate either
  assert r"\frac{1}{2}" not in ma.lenient_candidates(response)
  assert ma.lenient_correct(response, HALF_SOLUTION) is False
  assert ma.lenient_correct(response, r"\boxed{3}") is True


def test_lenient_math_drops_nothing_unlike_gsm8k():
  unstable = "Wait, that is wrong. Wait, wrong again. Wait, I am stuck in a loop. Glitch. So $\\boxed{5}$"
  assert gsm8k.response_candidates(unstable) == []
  assert ma.lenient_candidates(unstable)[0] == "5"
  assert ma.lenient_correct(unstable, r"$\boxed{5}$") is True


@pytest.mark.parametrize("gold", [r"\frac{14}{3}", r"The ratio is $\boxed{\dfrac{14}{3}}$."])
def test_lenient_gold_from_answer_field_or_solution(gold):
  assert ma.lenient_reference_candidates(gold)[0] == r"\frac{14}{3}"
  assert ma.lenient_correct(r"The ratio is $\frac{28}{6}$, i.e. \boxed{\frac{14}{3}}", gold) is True
  assert ma.lenient_correct(r"The ratio is \boxed{\frac{14}{5}}", gold) is False


@pytest.mark.parametrize("field, want", [("9 (apples)", "9"), ("3.5 (kg)", "3.5"), ("12", "12")])
def test_asdiv_reference(field, want):
  assert ma.asdiv_reference(field) == want


@pytest.mark.parametrize("response, strict_match, flexible", [
    ("She has 4 + 5 = 9 apples.", False, True),
    ("#### 9\nShe picks 2 more tomorrow.", True, False),   # flexible takes the last number
    ("She has 8 apples.", False, False),
])
def test_asdiv_strict(response, strict_match, flexible):
  assert ma.asdiv_strict_correct(response, "9 (apples)", "strict-match") is strict_match
  assert ma.asdiv_strict_correct(response, "9 (apples)", "flexible-extract") is flexible


@pytest.mark.parametrize("response, correct", [
    ("4 + 5 = 9\nThe answer is 9 apples.", True),
    ("The answer is 8.", False),
    ("Wait, 9 is wrong. Wait, that is wrong. Wait, maybe 9 is false. I am stuck in a loop", False),  # dropped
])
def test_asdiv_lenient(response, correct):
  assert ma.asdiv_lenient_correct(response, "9 (apples)") is correct


def test_missing_extras_name_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "math_verify", None)   # `import math_verify` now fails
  module = importlib.reload(ma)                            # the module itself still imports
  assert module.reference_answer(r"\boxed{7}") == "7"
  for scorer in (module.math_verify_correct, module.strict_correct, module.lenient_correct):
    with pytest.raises(ImportError, match=r"pip install 'dmax-jax\[eval\]'"):
      scorer("7", r"\boxed{7}")
