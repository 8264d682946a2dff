"""Answer scoring for the MATH-style benchmarks (MATH-500, Minerva-Algebra) and ASDiv, written anew from the
rules of DMax's evaluation (`dInfer/evaluations` in the official repository).

MATH, strict: lm-evaluation-harness's `minerva_math` task (`tasks/math/utils.py`), two metrics.
- The reference is the solution's last `\\boxed{...}` (or, when `\\boxed ` with a space occurs, the text after
  the last `\\boxed ` up to the next `$`), put through Minerva's `normalize_final_answer` (appendix D of
  Lewkowycz et al., 2022: keep what follows the last `=`, drop spaces, units such as `cm` / `degrees` / `^\\circ`,
  `\\text{}` and `$`, and expand `\\frac12`).
- `exact_match`: the response's answer is only what follows "Final Answer: The final answer is" on one line up to
  "<any character> I hope it is correct." (appended to the response first, so a line ending in "$42$. " still
  matches, one ending in "$42$." does not); without that phrase the answer is "[invalidanswer]", whatever the
  response boxed. The normalised answer equals the reference when
  `sympy.simplify(parse_latex(answer) - parse_latex(reference)) == 0` within 5 s, so `0.5` equals `\\frac12`,
  while answers that sympy's LaTeX parser rejects (tuples, intervals) never match, not even themselves.
- `math_verify`: `verify(gold=parse(solution), target=parse(response))` of the math-verify package.
- DMax's task YAMLs also carry GSM8K's filters (`strict-match`, `flexible-extract`), and lm-eval applies them
  *before* `process_results`: `filter_name` reproduces that. The filtered text is a bare number (or
  "[invalid]"), so exact_match is 0 under both filters and math_verify compares only the number picked.

MATH, lenient: DMax's post-hoc `val_math.py` (gold from MATH-500's `answer` field) and `val_algebra.py` (gold
from the solution). A response yields up to ten cleaned candidates: the last answer phrase and the last
`\\boxed{}`, each only when fewer than 20 letters/digits follow it, the last LaTeX block of its last 800
characters, its last three lines and the right-hand side of their last `=`, and the whole response when at most
200 characters long. The gold yields the last `\\boxed{}` and answer phrases (else candidates of the same
kinds). The response is correct when any pair is equal after cleaning and Minerva normalisation, or
sympy-equal, or math-verify-equal, all within 8 s. Unlike `val_gsm8k.py`, no response is dropped as unstable.

ASDiv: the target is the `answer` field up to " (" (`9 (apples)` -> `9`), scored strictly by GSM8K's filters;
`val_asdiv.py` is `val_gsm8k.py` with the raw `answer` field as gold, so the lenient scorer is GSM8K's.

Differences from the official code: `\\fbox{}` references are read (lm-eval's `remove_boxed` asserts on them)
and a text without any box is taken as a bare final answer (boxed first for math-verify). Box lists come from
`gsm8k.boxed_contents` (by position, nested boxes included; val_math lists `\\boxed` before `\\fbox` and skips
nested boxes: this matters only when both kinds occur or boxes nest, and cleaning unwraps nests). A timeout
cannot be swallowed by an `except Exception` inside sympy, and the lenient 8 s bound covers the math-verify
calls too. Time limits use SIGALRM, so they apply in the main thread only. As in `val_math.py`, candidates reach
`sympy.sympify`, which evaluates them as Python: cleaning removes every `__` first, so no dunder attribute chain
gets there, but a call of one of sympy's own functions (`plot(x)`) would run.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import threading
import types
from importlib.metadata import version
from typing import Any, Callable, Iterable, Iterator

from dmax_jax.evaluation import gsm8k

INVALID_ANSWER = "[invalidanswer]"
INSTALL_HINT = ("the MATH scorers need math-verify, sympy and antlr4-python3-runtime 4.11: "
                "pip install 'dmax-jax[eval]'")
STRICT_TIMEOUT_S = 5
MATH_VERIFY_TIMEOUT_S = 5
LENIENT_TIMEOUT_S = 8.0

_FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")
_END_SEQUENCE = "I hope it is correct."
_SUBSTITUTIONS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
REMOVED_EXPRESSIONS = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"',
    "\\dots",
)
_LENIENT_REMOVED = tuple(e for e in REMOVED_EXPRESSIONS if e not in ("sue", "childrentickets"))  # val_math's list
_LATEX_REWRITES = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$"),
    (r"(\\text\{)(.*?)(\})", r"\2"),
    (r"(\\textbf\{)(.*?)(\})", r"\2"),
    (r"(\\overline\{)(.*?)(\})", r"\2"),
    (r"(\\boxed\{)(.*)(\})", r"\2"),
    (r"(frac)([^{])(.)", r"frac{\2}{\3}"),
    (r"(sqrt)([^{])", r"sqrt{\2}"),
))

_ANSWER_PATTERNS = tuple(re.compile(p) for p in (
    r"(?is)<answer>\s*(.*?)\s*</answer>",
    r"(?is)Final Answer\s*[:：]\s*(.*?)(?=\n\s*\n|$)",
    r"(?is)The final answer is\s*(.*?)(?:\.?\s*I hope it is correct\.?|$)",
    r"(?im)^\s*Answer\s*[:：]\s*(.+?)\s*$",
    r"(?im)^\s*####\s*(.+?)\s*$",
))
_ANSWER_PREFIXES = tuple(re.compile(p) for p in (
    r"^\s*####\s*",
    r"(?is)^\s*<answer>\s*",
    r"(?is)\s*</answer>\s*$",
    r"(?is)^\s*(?:final answer|answer)\s*[:：]\s*",
    r"(?is)^\s*the final answer is\s*",
    r"(?is)\s*I hope it is correct\.?\s*$",
))
_CLEANUP_REPLACEMENTS = (("\u2212", "-"), ("\u00d7", "*"), ("\u00f7", "/"), ("\\dfrac", "\\frac"),
                         ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""),
                         ("\\;", ""), ("\\%", "%"))
_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_WRAPPER_COMMANDS = ("\\boxed", "\\fbox", "\\text{", "\\mathrm{", "\\textbf{")
_EDGE_PUNCTUATION = " \n\t\r,.;:!。；，"
_LATEX_BLOCKS = tuple(re.compile(p) for p in (
    r"(?s)\$\$(.*?)\$\$", r"(?s)\\\[(.*?)\\\]", r"(?s)\\\((.*?)\\\)", r"(?s)(?<!\$)\$(?!\$)(.+?)(?<!\$)\$(?!\$)",
))
_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SUFFIX_NOISE = re.compile(r"[\s`*_>#\-\.,;:!?\)\]\}]+")
_SUFFIX_SIGNAL = re.compile(r"[A-Za-z0-9\u4e00-\u9fff\\]")
_NOT_ANSWERS = ("answer", "final answer")
_LATEX_TOKENS = ("\\frac", "\\sqrt", "\\pi", "\\cdot", "\\pm", "{", "}")


class _TimeLimitExceeded(BaseException):
  """Raised by SIGALRM; a BaseException so that no `except Exception` on the way can swallow it."""


# ---- optional dependencies and time limits ---------------------------------------------------------------------

@functools.cache
def _extras() -> types.SimpleNamespace:
  """sympy, its ANTLR LaTeX parser and math-verify, imported on first use."""
  try:
    import sympy
    from math_verify import parse, verify
    from sympy.parsing.latex import parse_latex
    antlr_version = version("antlr4-python3-runtime")
  except ImportError as error:
    raise ImportError(INSTALL_HINT) from error
  if not antlr_version.startswith("4.11"):  # sympy's parse_latex refuses any other runtime
    raise ImportError(f"{INSTALL_HINT} (antlr4-python3-runtime {antlr_version} is installed)")
  return types.SimpleNamespace(sympy=sympy, parse_latex=parse_latex, parse=parse, verify=verify)


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
  """Raise _TimeLimitExceeded after `seconds` (main thread only: elsewhere there is no limit)."""
  if not _in_main_thread():
    yield
    return

  def expire(signum: int, frame: Any) -> None:
    raise _TimeLimitExceeded

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# ---- references and Minerva normalisation -----------------------------------------------------------------------

def _closing_brace(text: str, start: int) -> int | None:
  """Index of the `}` that brings the brace depth counted from `start` back to zero."""
  depth = 0
  for position in range(start, len(text)):
    if text[position] == "{":
      depth += 1
    elif text[position] == "}":
      depth -= 1
      if depth == 0:
        return position
  return None


def last_boxed_answer(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (else `\\fbox{...}`), as lm-eval's `last_boxed_only_string` +
  `remove_boxed`; `\\boxed 5` (with a space, anywhere in the text) yields what follows the last one up to `$`."""
  if "\\boxed " in text:
    return text.split("\\boxed ")[-1].split("$")[0]
  start = text.rfind("\\boxed")
  if start < 0:
    start = text.rfind("\\fbox")
  end = _closing_brace(text, start) if start >= 0 else None
  if end is None:
    return None
  boxed = text[start:end + 1]
  prefix = next((p for p in ("\\boxed{", "\\fbox{") if boxed.startswith(p)), None)
  return boxed[len(prefix):-1] if prefix else None


def normalize_final_answer(answer: str, removed: Iterable[str] = REMOVED_EXPRESSIONS) -> str:
  """Minerva's normalisation of a final answer: `\\text{ cm}`, `^\\circ`, `$`, spaces dropped, `\\frac12` expanded;
  `removed` is the list of expressions dropped (val_math's lacks "sue" and "childrentickets")."""
  answer = answer.split("=")[-1]
  for before, after in _SUBSTITUTIONS:
    answer = answer.replace(before, after)
  for expression in removed:
    answer = answer.replace(expression, "")
  for pattern, replacement in _LATEX_REWRITES:
    answer = pattern.sub(replacement, answer)
  answer = answer.replace("$", "")
  return answer.replace(",", "") if answer.replace(",", "").isdigit() else answer


def reference_answer(solution: str) -> str:
  """The normalised final answer of a MATH solution (its last box), as lm-eval's `process_docs`; a text with no
  box is taken as a bare final answer (MATH-500's `answer` field) and normalised as it is."""
  boxed = last_boxed_answer(solution)
  return normalize_final_answer(solution if boxed is None else boxed)


# ---- strict (lm-evaluation-harness) -------------------------------------------------------------------------

def lm_eval_filtered(response: str, filter_name: str) -> str:
  """What lm-eval hands `process_results` under DMax's YAML filter `filter_name` (`strict-match` |
  `flexible-extract`): the number GSM8K's filter picks, or "[invalid]"."""
  return gsm8k.strict_extract(response, filter_name) or "[invalid]"


def unnormalized_answer(response: str) -> str:
  """lm-eval's `get_unnormalized_answer`: the text between "Final Answer: The final answer is" and
  ". I hope it is correct." (which is appended first), or "[invalidanswer]"."""
  match = _FINAL_ANSWER.search(response + _END_SEQUENCE)
  return match.group(1).strip() if match else INVALID_ANSWER


def latex_equivalent(answer: str, reference: str) -> bool:
  """lm-eval's `is_equiv`: sympy's difference of the two parsed LaTeX strings simplifies to 0 within 5 s."""
  extras = _extras()
  try:
    with _time_limit(STRICT_TIMEOUT_S):
      difference = extras.parse_latex(answer) - extras.parse_latex(reference)
      return bool(extras.sympy.simplify(difference) == 0)
  except (_TimeLimitExceeded, Exception):  # timeouts, parse errors, types that do not subtract: not equal
    return False


def strict_correct(response: str, reference: str, filter_name: str | None = None) -> bool:
  """lm-eval minerva `exact_match` against `reference` (as `reference_answer` returns it); `filter_name` first
  reduces the response as DMax's task YAML does (see `lm_eval_filtered`)."""
  text = response if filter_name is None else lm_eval_filtered(response, filter_name)
  return latex_equivalent(normalize_final_answer(unnormalized_answer(text)), reference)


def _math_verify_timeout() -> int | None:
  return MATH_VERIFY_TIMEOUT_S if _in_main_thread() else None


def math_verify_correct(response: str, solution: str, filter_name: str | None = None) -> bool:
  """lm-eval minerva `math_verify`: `verify(gold=parse(solution), target=parse(response))`. A bare final answer
  (no box, e.g. MATH-500's `answer` field) is boxed first so that math-verify reads it whole."""
  extras = _extras()
  text = response if filter_name is None else lm_eval_filtered(response, filter_name)
  gold = solution if "\\boxed" in solution or "\\fbox" in solution else f"\\boxed{{{solution}}}"
  timeout = _math_verify_timeout()
  return bool(extras.verify(gold=extras.parse(gold, parsing_timeout=timeout),
                            target=extras.parse(text, parsing_timeout=timeout), timeout_seconds=timeout))


# ---- lenient (DMax's val_math / val_algebra rules): cleaning ---------------------------------------------------

def _strip_markdown(text: str) -> str:
  return text.strip().replace("**", "").replace("__", "").strip("`")


def _strip_answer_prefix(text: str) -> str:
  text = _strip_markdown(text)
  for pattern in _ANSWER_PREFIXES:
    text = pattern.sub("", text)
  return text.strip()


def _braced_body(text: str) -> str | None:
  """Body of the first `{...}` of `text` when its closing brace ends the text."""
  opening = text.find("{")
  closing = _closing_brace(text, opening) if opening >= 0 else None
  return text[opening + 1:closing].strip() if closing == len(text) - 1 else None


def _unwrap_once(text: str) -> str:
  for left, right in _DELIMITERS:
    if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
      return text[len(left):-len(right)].strip()
  if text.startswith(_WRAPPER_COMMANDS):
    body = _braced_body(text)
    return text if body is None else body
  return text


def _unwrap(text: str) -> str:
  """Peel `$...$`, `\\[...\\]`, `\\boxed{...}`, `\\text{...}`, ... and edge punctuation until nothing changes."""
  current = text.strip()
  while True:
    unwrapped = _unwrap_once(current.strip()).strip(_EDGE_PUNCTUATION)
    if unwrapped == current:
      return current
    current = unwrapped


def cleanup_candidate(text: str) -> str:
  """val_math's cleaning: answer prefixes, markdown, `\\dfrac`, `\\left`, thin spaces and wrappers removed."""
  text = _strip_answer_prefix(text)
  for before, after in _CLEANUP_REPLACEMENTS:
    text = text.replace(before, after)
  return re.sub(r"\s+", " ", _unwrap(text)).strip()


def _canonical(text: str) -> str:
  text = normalize_final_answer(cleanup_candidate(text), _LENIENT_REMOVED)
  return text.replace("\\{", "{").replace("\\}", "}").replace(" ", "").strip(_EDGE_PUNCTUATION)


def _cleaned(raw: Iterable[str]) -> list[str]:
  """Cleaned, non-empty, not the bare word "answer", deduplicated in order."""
  cleaned = (cleanup_candidate(item) for item in raw)
  return list(dict.fromkeys(c for c in cleaned if c and c.lower() not in _NOT_ANSWERS))


def _cleaned_whole(text: str) -> list[str]:
  cleaned = cleanup_candidate(text)
  return [cleaned] if cleaned else []


# ---- lenient: candidates --------------------------------------------------------------------------------------

def _answer_matches(text: str) -> list[str]:
  """Answer-phrase matches, pattern by pattern (not by position), as val_math lists them."""
  return [m.strip() for pattern in _ANSWER_PATTERNS for m in pattern.findall(text) if m.strip()]


def _with_first_line(match: str) -> list[str]:
  first = match.splitlines()[0].strip()
  return [match, first] if first and first != match else [match]


def _has_substantial_suffix(text: str, start: int) -> bool:
  """At least 20 letters, digits or backslashes follow `start`, once punctuation is set aside."""
  return len(_SUFFIX_SIGNAL.findall(_SUFFIX_NOISE.sub("", text[start:].strip()))) >= 20


def _last_answer_near_end(text: str) -> str | None:
  matches = [m for pattern in _ANSWER_PATTERNS for m in pattern.finditer(text) if m.group(1).strip()]
  if not matches:
    return None
  last = max(matches, key=lambda m: m.end())
  return None if _has_substantial_suffix(text, last.end()) else cleanup_candidate(last.group(1).strip())


def _last_boxed_near_end(text: str) -> str | None:
  boxes = []
  for opening in _BOX_OPENING.finditer(text):
    closing = _closing_brace(text, opening.end() - 1)
    if closing is not None:
      boxes.append((closing, text[opening.end():closing].strip()))
  if not boxes:
    return None
  closing, content = max(boxes)
  return None if _has_substantial_suffix(text, closing + 1) else content


def _latex_blocks(text: str) -> list[str]:
  """The last six `$$...$$`, `\\[...\\]`, `\\(...\\)`, `$...$` bodies, listed delimiter by delimiter."""
  return [b.strip() for pattern in _LATEX_BLOCKS for b in pattern.findall(text) if b.strip()][-6:]


def _line_and_rhs(line: str) -> list[str]:
  stripped = _strip_markdown(line).lstrip("-*").strip()
  if not stripped:
    return []
  rhs = stripped.split("=")[-1].strip()
  return [stripped, rhs] if "=" in stripped and rhs else [stripped]


def _lines(text: str) -> list[str]:
  return [line.strip() for line in text.splitlines() if line.strip()]


def _final_marked_candidates(text: str) -> list[str]:
  raw = gsm8k.boxed_contents(text)[-1:]
  for match in reversed(_answer_matches(text)[-3:]):
    raw += _with_first_line(match)
  return _cleaned(raw)


def _all_candidates(text: str) -> list[str]:
  raw = list(reversed(gsm8k.boxed_contents(text)[-6:]))
  for match in reversed(_answer_matches(text)[-6:]):
    raw += _with_first_line(match)
  raw += reversed(_latex_blocks(text))
  raw += reversed([c for line in _lines(text)[-8:] for c in _line_and_rhs(line)][-8:])
  if len(text.strip()) <= 200:
    raw.append(text.strip())
  return _cleaned(raw)[:20]


def lenient_reference_candidates(solution_or_answer: str) -> list[str]:
  """Gold candidates: the last box and answer phrases, else every candidate of the text (for a short bare answer
  such as MATH-500's `answer` field this is the set val_math builds), else the whole text cleaned."""
  text = solution_or_answer.strip()
  if not text:
    return []
  return _final_marked_candidates(text) or _all_candidates(text) or _cleaned_whole(text)


def lenient_candidates(response: str) -> list[str]:
  """val_math's candidate answers of a response, most trusted first (at most 10). Never empty for a
  non-blank response: val_math drops nothing."""
  text = response.strip()
  if not text:
    return []
  tail = text[-800:]
  raw = [_last_answer_near_end(response), _last_boxed_near_end(response), *_latex_blocks(tail)[-1:]]
  for line in reversed(_lines(tail)[-3:]):
    raw += _line_and_rhs(line)
  if len(text) <= 200:
    raw.append(text)
  return _cleaned(r for r in raw if r)[:10] or _cleaned_whole(text)


# ---- lenient: comparison --------------------------------------------------------------------------------------

def _sympy_value(text: str) -> Any:
  """val_math's numeric reading: LaTeX through parse_latex, else a plain expression through sympify; None."""
  extras = _extras()
  candidate = cleanup_candidate(text)
  if not candidate:
    return None
  if candidate.endswith("%"):
    candidate = f"({candidate[:-1]})/100"
  if any(token in candidate for token in _LATEX_TOKENS):
    with contextlib.suppress(Exception):
      return extras.parse_latex(candidate)
  plain = (candidate.replace("^", "**").replace("\\pi", "pi").replace("\\cdot", "*")
           .replace("{", "(").replace("}", ")"))
  try:
    return extras.sympy.sympify(plain)
  except Exception:
    return None


def _sympy_equal(gold: str, prediction: str) -> bool:
  left, right = _sympy_value(gold), _sympy_value(prediction)
  if left is None or right is None:
    return False
  try:
    return bool(_extras().sympy.simplify(left - right) == 0)
  except Exception:
    return False


@functools.lru_cache(maxsize=16384)
def _math_verify_parsed(text: str) -> list:
  return _extras().parse(text, parsing_timeout=None)  # the lenient time limit covers it


def _snippet_variants(text: str) -> list[str]:
  cleaned = cleanup_candidate(text)
  return [v for v in dict.fromkeys((text, cleaned, f"${cleaned}$")) if v]


def _verified(gold: list, prediction: list) -> bool:
  try:
    return bool(_extras().verify(gold, prediction, timeout_seconds=None))
  except Exception:
    return False


def _math_verify_equal(gold: str, prediction: str) -> bool:
  return any(_verified(_math_verify_parsed(g), _math_verify_parsed(p))
             for g in _snippet_variants(gold) for p in _snippet_variants(prediction))


def _any_pair(golds: list[str], predictions: list[str], equal: Callable[[str, str], bool]) -> bool:
  return any(equal(gold, prediction) for gold in golds for prediction in predictions)


def _canonical_match(golds: list[str], predictions: list[str]) -> bool:
  predicted = {_canonical(prediction) for prediction in predictions}
  return any(gold and gold in predicted for gold in map(_canonical, golds))


def lenient_correct(response: str, solution_or_answer: str) -> bool:
  """DMax's val_math (MATH-500 `answer` field) / val_algebra (solution) verdict: some response candidate equals
  some gold candidate, as normalised text, then by sympy, then by math-verify; wrong after 8 s."""
  _extras()
  try:
    with _time_limit(LENIENT_TIMEOUT_S):
      golds = lenient_reference_candidates(solution_or_answer)
      predictions = lenient_candidates(response)
      return (_canonical_match(golds, predictions) or _any_pair(golds, predictions, _sympy_equal)
              or _any_pair(golds, predictions, _math_verify_equal))
  except _TimeLimitExceeded:
    return False


# ---- ASDiv --------------------------------------------------------------------------------------------------

def asdiv_reference(answer_field: str) -> str:
  """The task YAML's target: `"9 (apples)"` -> `"9"`."""
  return answer_field.split(" (")[0]


def asdiv_strict_correct(response: str, answer_field: str, filter_name: str = "flexible-extract") -> bool:
  """GSM8K's lm-eval filters against the ASDiv target (which has no `#### `: the filters never needed one)."""
  return gsm8k.strict_correct(response, asdiv_reference(answer_field), filter_name)


def asdiv_lenient_correct(response: str, answer_field: str) -> bool:
  """val_asdiv is val_gsm8k with the raw `answer` field as gold (its last number): GSM8K's lenient scorer,
  unstable responses dropped (`gsm8k.response_candidates` returns [] for them)."""
  return gsm8k.lenient_correct(response, answer_field)
