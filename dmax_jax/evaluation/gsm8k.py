"""GSM8K answer extraction and scoring: lm-evaluation-harness's two filters (the standard, strict scorer) and
the lenient numeric scorer of DMax's post-hoc `val_gsm8k.py` (same rules, written anew here).

Strict (the task YAML of DMax's evaluation): `strict-match` takes the first `#### <number>`; `flexible-extract`
the last number-like match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`; both are compared with the reference after
removing commas, `$`, everything up to `#### `, a final `.` and trailing `.0`s.

Lenient: numbers are compared as exact rationals (`1,200.50` = `2401/2`); the response yields up to several
candidates (answer phrases, the last `\\boxed{}`, the last lines, the tail) and is correct when one of its
first two equals one of the reference's. A response that looks unstable (repeated "wait", "wrong", "stuck",
...) without a clean final answer near its end yields no candidate: it is *dropped* (counted wrong).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORED = [re.compile(p) for p in (r",", r"\$", r"(?s).*#### ", r"\.$", r"(?<=\d)\.0+(?!\d)")]
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_ANSWER_PHRASES = [re.compile(p) for p in (
    r"(?is)####\s*([^\n]+)",
    r"(?is)<answer>\s*(.*?)\s*</answer>",
    r"(?is)Final Answer\s*[:：]\s*(.*?)(?=\n\s*\n|$)",
    r"(?is)The final answer is\s*(.*?)(?:\.?\s*I hope it is correct\.?|$)",
    r"(?im)^\s*Answer\s*[:：]\s*(.+?)\s*$",
)]
_UNSTABLE_WORDS = re.compile(r"\b(?:wrong|incorrect|false|typo|glitch|stuck|loop(?:ing)?|malfunction|give up|"
                             r"system error|not right|confusing)\b", re.IGNORECASE)
_GIVING_UP = ("i give up", "system error", "malfunction", "i'm stuck", "glitch")
_TRIGGERS = ("wait", "wrong", "incorrect", "false", "glitch", "stuck", "loop", "malfunction", "system error",
             "give up")


# ---- strict (lm-evaluation-harness) ------------------------------------------------------------------------

def _normalise_strict(text: str) -> str:
  for pattern in _IGNORED:
    text = pattern.sub("", text)
  return text.strip().lower()


def strict_extract(response: str, filter_name: str = "flexible-extract") -> str | None:
  """The answer string lm-eval's GSM8K filter `filter_name` (`strict-match` | `flexible-extract`) takes."""
  if filter_name == "strict-match":
    match = STRICT_RE.search(response)
    return match.group(1) if match else None
  matches = FLEXIBLE_RE.findall(response)
  return next((g for g in matches[-1] if g), None) if matches else None


def strict_correct(response: str, reference: str, filter_name: str = "flexible-extract") -> bool:
  """lm-eval's exact match of the filtered answer against the reference solution (`... #### 42`)."""
  answer = strict_extract(response, filter_name)
  return answer is not None and _normalise_strict(answer) == _normalise_strict(reference)


# ---- lenient (DMax's val_gsm8k rules) ------------------------------------------------------------------------

def _unwrap(text: str) -> str:
  for token in ("**", "__", "\\boxed{", "\\fbox{", "}", "\\$", "$", "\\(", "\\)", "\\[", "\\]", ","):
    text = text.replace(token, "")
  return text.strip().strip("`").strip()


def canonical_number(text: str) -> str | None:
  """`"1,200.50"` -> `"2401/2"`, `"$18.00"` -> `"18"`, `"6/8"` -> `"3/4"`, `"12%"` -> `"12"`; None if not a number."""
  cleaned = _unwrap(text).rstrip(".。!！?？,，;；:：").replace("%", "").strip()
  if not cleaned:
    return None
  if re.fullmatch(r"-?\d+/\d+", cleaned):
    numerator, denominator = (int(part) for part in cleaned.split("/"))
    if denominator == 0:
      return None
    value = Fraction(numerator, denominator)
  else:
    try:
      value = Fraction(Decimal(cleaned))
    except (InvalidOperation, ValueError, OverflowError):
      return None
  return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _last_number(text: str) -> str | None:
  matches = NUMBER_RE.findall(_unwrap(text))
  return matches[-1] if matches else None


def boxed_contents(text: str) -> list[str]:
  """Contents of every `\\boxed{...}` / `\\fbox{...}`, nested braces kept, in order of appearance."""
  found = []
  for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
    depth, start = 1, match.end()
    for pos in range(start, len(text)):
      depth += {"{": 1, "}": -1}.get(text[pos], 0)
      if depth == 0:
        found.append(text[start:pos].strip())
        break
  return found


def _answer_phrases(text: str) -> list[str]:
  return [m.strip() for pattern in _ANSWER_PHRASES for m in pattern.findall(text) if m.strip()]


def _snippet_unstable(text: str) -> bool:
  lower = text.lower()
  return bool(lower.strip()) and (
      bool(_UNSTABLE_WORDS.search(lower)) or lower.count("wait") >= 2
      or (lower.count("?") >= 2 and any(w in lower for w in (" no", "wrong", "incorrect"))))


def _response_unstable(text: str) -> bool:
  lower = text.lower()
  if any(phrase in lower for phrase in _GIVING_UP):
    return True
  wrongs = lower.count("wrong") + lower.count("incorrect") + lower.count("false")
  return (lower.count("wait") >= 3 and wrongs >= 1) or sum(lower.count(t) for t in _TRIGGERS) >= 8


def _clean_final_answer_near_end(text: str) -> bool:
  tail = text.strip()[-250:]
  return bool(tail) and not _snippet_unstable(tail) and bool(_answer_phrases(tail) or boxed_contents(tail))


def _dedupe(items) -> list[str]:
  return list(dict.fromkeys(item for item in items if item))


def reference_candidates(reference: str) -> list[str]:
  """Canonical numbers of a GSM8K reference solution: its `#### ` answer, and its last number."""
  phrases = _answer_phrases(reference)
  raw = [_last_number(phrases[-1]) if phrases else None, _last_number(reference)]
  return _dedupe(canonical_number(r) for r in raw if r)


def unstable(response: str) -> bool:
  """The lenient scorer drops this response: it wavers (repeated "wait", "wrong", ...) without a clean final
  answer near its end."""
  text = response.strip()
  return _response_unstable(text) and not _clean_final_answer_near_end(text)


def response_candidates(response: str) -> list[str]:
  """Canonical candidate answers of a response, most trusted first; [] for an unstable response."""
  text = response.strip()
  if not text or unstable(text):
    return []
  raw = [_last_number(span) for span in reversed(_answer_phrases(text)[-3:]) if not _snippet_unstable(span)]
  boxed = boxed_contents(text)
  if boxed and not _snippet_unstable(boxed[-1]):
    raw.append(_last_number(boxed[-1]))
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  raw += [_last_number(line) for line in reversed(lines[-5:]) if not _snippet_unstable(line)]
  tail = "\n".join(lines[-8:])
  if not _snippet_unstable(tail):
    raw.append(_last_number(tail))
  return _dedupe(canonical_number(r) for r in raw if r)


def lenient_correct(response: str, reference: str) -> bool:
  """One of the response's first two candidates equals one of the reference's."""
  gold = set(reference_candidates(reference))
  return any(candidate in gold for candidate in response_candidates(response)[:2])
