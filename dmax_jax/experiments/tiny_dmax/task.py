"""A deterministic generator of small GSM8K-style arithmetic word problems with worked solutions.

A `Problem` is a short story: a person starts with some items, then a few events change the count
(buy more, give some away, buy bags of several, give several to each of some friends, the count
doubles/triples, share equally), and the question asks for the final count (or each friend's share).
The prompt has one fixed wording per problem. Its solution is sampled from many valid variants that
differ in the ORDER of the steps (story order, all products first, or summing gains and losses before
touching the count: different intermediate results), in the wording of every sentence and in the
operand order of `+`/`*`. Every variant ends with "The answer is N." Parallel decoding that mixes
tokens of incompatible variants produces a broken chain: the failure DMax is designed to fix.

Splits never overlap: a problem belongs to the split chosen by a hash of its canonical form (`key`),
so the same problem can never be drawn into two splits, and every split is generated from its own
seeded stream (the test set does not depend on the train size).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Iterator, Sequence

SPLITS = ("train", "validation", "test")

FEMALE_NAMES = ("Mia", "Ava", "Zoe", "Lily", "Emma", "Sara", "Nina", "Rosa")
MALE_NAMES = ("Leo", "Sam", "Ben", "Max", "Tom", "Jack", "Omar", "Ivan")
ITEMS = ("apples", "pens", "cards", "books", "eggs", "coins", "stickers", "marbles", "cookies", "shells",
         "stamps", "candies")
CONTAINERS = ("bags", "boxes", "packs")
EVENT_KINDS = ("add", "sub", "add_groups", "sub_groups", "mul", "share")

# Prompt wording, one entry per `Event.word`.
_PROMPT_TEMPLATES = {
    "add": ("{P} buys {x} more {item}.", "{P} finds {x} more {item}.", "{P} gets {x} more {item} from {F}."),
    "sub": ("{P} gives {x} {item} to {F}.", "{P} loses {x} {item}.", "{P} sells {x} {item}."),
    "add_groups": tuple("{P} buys {x} " + c + " with {y} {item} each." for c in CONTAINERS),
    "sub_groups": ("{P} gives {y} {item} to each of {x} friends.",),
    "mul": ("Then the number of {item} {times}.",),
    "share": ("{P} shares them equally among {x} friends.",),
}
_TIMES_WORDS = {2: "doubles", 3: "triples"}

# Solution sentences. `{E}` is an equation "u op v = r".
_STATE_FRAMES = ("{N} now has {E} {item}.", "After that {p} has {E} {item}.", "{E}, so {p} has {r} {item}.")
_GROUP_FRAMES = {
    "add_groups": ("The {cont} hold {E} {item}.", "{P} gets {E} {item} in the {cont}.",
                   "{E} {item} come in the {cont}."),
    "sub_groups": ("{P} gives away {E} {item}.", "The friends get {E} {item}.", "{E} {item} go to the friends."),
}
_TOTAL_FRAMES = {
    "gain": ("{P} gets {E} more {item} in total.", "In total {E} {item} are added."),
    "loss": ("{P} loses {E} {item} in total.", "In total {E} {item} are gone."),
}
_SHARE_FRAMES = ("Each friend gets {E} {item}.", "{E}, so each friend gets {r} {item}.")
ANSWER_SENTENCE = "The answer is {answer}."
STRATEGIES = ("story", "products_first", "gains_losses")

_ANSWER_RE = re.compile(r"The answer is (-?\d+)")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Difficulty knobs of the generator, sized for a ~2.8M-parameter model trained for half an hour on a CPU
  (larger settings did not train in that budget: `HARDER`, 2-4 events and numbers up to 99, was at 0%
  test accuracy after 800 steps of batch 32; 2-3 events with numbers up to 30 at ~13% after 1200)."""
  min_events: int = 2
  max_events: int = 2
  min_start: int = 3
  max_start: int = 10
  max_operand: int = 5      # largest number bought / given away in one event
  max_group_count: int = 3  # bags / friends in a group event
  max_group_size: int = 4   # items per bag / per friend
  max_value: int = 20       # no count or intermediate result above this
  share_prob: float = 0.25  # probability that the question asks for an equal share
  # Split fractions (the rest is train), applied to a hash of the problem's canonical form.
  test_fraction: float = 0.1
  validation_fraction: float = 0.1

  def __post_init__(self):
    if not 1 <= self.min_events <= self.max_events:
      raise ValueError(f"need 1 <= min_events <= max_events, got {self.min_events}, {self.max_events}")
    if not 1 <= self.min_start <= self.max_start <= self.max_value:
      raise ValueError("need 1 <= min_start <= max_start <= max_value")
    if min(self.max_operand, self.max_group_count, self.max_group_size) < 2:
      raise ValueError("max_operand, max_group_count and max_group_size must be >= 2")
    if not (0 <= self.test_fraction and 0 <= self.validation_fraction
            and self.test_fraction + self.validation_fraction < 1):
      raise ValueError("test_fraction and validation_fraction must be >= 0 and sum to < 1")

  def describe(self) -> str:
    """The problems this config generates, in words (the README's statement of DMax-tiny's range)."""
    events = (f"{self.min_events}" if self.min_events == self.max_events
              else f"{self.min_events}-{self.max_events}")
    return (f"a start count of {self.min_start}-{self.max_start} and {events} events, each one of: buy/find/get "
            f"or give/lose/sell 2-{self.max_operand}, buy 2-{self.max_group_count} bags of 2-{self.max_group_size}, "
            f"give 2-{self.max_group_size} to each of 2-{self.max_group_count} friends, double or triple, or "
            f"(last) share equally among 2-{self.max_group_count} friends; no count above {self.max_value}")


HARDER = dict(max_events=4, max_start=40, max_operand=20, max_group_count=5, max_group_size=9, max_value=99)


@dataclasses.dataclass(frozen=True)
class Event:
  """One change of the count: `kind` in EVENT_KINDS; `x` the amount (groups/friends for group events,
  factor for mul, friends for share); `y` the group size; `word` picks the prompt wording."""
  kind: str
  x: int
  y: int = 0
  word: int = 0


@dataclasses.dataclass(frozen=True)
class Problem:
  name: str
  friend: str
  item: str
  start: int
  events: tuple[Event, ...]

  @property
  def key(self) -> str:
    """Canonical form (semantics + wording choices); equal keys <=> equal problems."""
    ev = ";".join(f"{e.kind},{e.x},{e.y},{e.word}" for e in self.events)
    return f"{self.name}|{self.friend}|{self.item}|{self.start}|{ev}"

  @property
  def pronoun(self) -> str:
    return "She" if self.name in FEMALE_NAMES else "He"

  def states(self) -> list[int]:
    """The count before the first event and after every event (a share yields the share)."""
    out = [self.start]
    for e in self.events:
      out.append(_apply(out[-1], e))
    return out

  @property
  def answer(self) -> int:
    return self.states()[-1]

  @property
  def prompt(self) -> str:
    fill = self._fill()
    parts = [f"{self.name} has {self.start} {self.item}."]
    for e in self.events:
      parts.append(_PROMPT_TEMPLATES[e.kind][e.word].format(x=e.x, y=e.y, times=_TIMES_WORDS.get(e.x), **fill))
    if self.events[-1].kind == "share":
      parts.append(f"How many {self.item} does each friend get?")
    else:
      parts.append(f"How many {self.item} does {self.name} have now?")
    return " ".join(parts)

  def _fill(self) -> dict[str, str]:
    return dict(N=self.name, P=self.pronoun, p=self.pronoun.lower(), F=self.friend, item=self.item)


def _apply(s: int, e: Event) -> int:
  if e.kind == "add":
    return s + e.x
  if e.kind == "sub":
    return s - e.x
  if e.kind == "add_groups":
    return s + e.x * e.y
  if e.kind == "sub_groups":
    return s - e.x * e.y
  if e.kind == "mul":
    return s * e.x
  if e.kind == "share":
    return s // e.x
  raise ValueError(f"unknown event kind {e.kind!r}")


# ---- generation ---------------------------------------------------------------------------------

def _random_event(rng: random.Random, s: int, cfg: TaskConfig, last: bool) -> Event | None:
  """An event applicable to count `s` that keeps every number within the config, or None."""
  kind = rng.choices(("add", "sub", "add_groups", "sub_groups", "mul"), weights=(3, 3, 2, 1, 1))[0]
  if last and rng.random() < cfg.share_prob:
    kind = "share"
  word = rng.randrange(len(_PROMPT_TEMPLATES[kind]))
  if kind == "add":
    hi = min(cfg.max_operand, cfg.max_value - s)
    return Event("add", rng.randint(2, hi), word=word) if hi >= 2 else None
  if kind == "sub":
    hi = min(cfg.max_operand, s - 2)
    return Event("sub", rng.randint(2, hi), word=word) if hi >= 2 else None
  if kind in ("add_groups", "sub_groups"):
    k, m = rng.randint(2, cfg.max_group_count), rng.randint(2, cfg.max_group_size)
    ok = s + k * m <= cfg.max_value if kind == "add_groups" else s - k * m >= 2
    return Event(kind, k, m, word=word) if ok else None
  if kind == "mul":
    f = rng.choice((2, 3))
    return Event("mul", f, word=word) if s * f <= cfg.max_value else None
  divisors = [k for k in range(2, cfg.max_group_count + 1) if s % k == 0]
  return Event("share", rng.choice(divisors), word=word) if divisors else None


def random_problem(rng: random.Random, cfg: TaskConfig = TaskConfig()) -> Problem:
  """Draws one problem (retrying event draws that would leave the allowed number range)."""
  name = rng.choice(FEMALE_NAMES + MALE_NAMES)
  friend = rng.choice([n for n in FEMALE_NAMES + MALE_NAMES if n != name])
  item = rng.choice(ITEMS)
  while True:
    s = start = rng.randint(cfg.min_start, cfg.max_start)
    n = rng.randint(cfg.min_events, cfg.max_events)
    events = []
    for i in range(n):
      e = None
      for _ in range(20):
        e = _random_event(rng, s, cfg, last=i == n - 1)
        if e is not None:
          break
      if e is None:
        break
      events.append(e)
      s = _apply(s, e)
    if len(events) == n:
      return Problem(name, friend, item, start, tuple(events))


def split_of(problem: Problem, cfg: TaskConfig = TaskConfig()) -> str:
  """The split a problem belongs to, from a stable hash of its canonical form."""
  u = int.from_bytes(hashlib.sha256(problem.key.encode()).digest()[:8], "big") / 2.0 ** 64
  if u < cfg.test_fraction:
    return "test"
  if u < cfg.test_fraction + cfg.validation_fraction:
    return "validation"
  return "train"


def iter_split(split: str, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> Iterator[Problem]:
  """Distinct problems of `split`, in a deterministic order fixed by (seed, split)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  rng = random.Random(f"tiny_dmax:{seed}:{split}")
  seen: set[str] = set()
  while True:
    p = random_problem(rng, cfg)
    if p.key not in seen and split_of(p, cfg) == split:
      seen.add(p.key)
      yield p


def generate_split(split: str, n: int, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> list[Problem]:
  """The first `n` problems of `split` (a prefix of the same list for any larger `n`)."""
  it = iter_split(split, seed, cfg)
  return [next(it) for _ in range(n)]


def make_splits(sizes: dict[str, int], seed: int = 0, cfg: TaskConfig = TaskConfig()) -> dict[str, list[Problem]]:
  """`{split: problems}` for the requested sizes, e.g. `{"train": 20000, "validation": 200, "test": 500}`."""
  return {split: generate_split(split, n, seed, cfg) for split, n in sizes.items()}


# ---- worked solutions ---------------------------------------------------------------------------

def _eq(rng: random.Random, op: str, terms: Sequence[int], result: int) -> str:
  """"a op b = r"; the terms of a commutative op appear in a random order."""
  terms = list(terms)
  if op in "+*" and rng.random() < 0.5:
    terms.reverse()
  return f" {op} ".join(str(t) for t in terms) + f" = {result}"


def _group_sentence(rng, fill, e: Event) -> str:
  frame = rng.choice(_GROUP_FRAMES[e.kind])
  return frame.format(E=_eq(rng, "*", (e.x, e.y), e.x * e.y), cont=CONTAINERS[e.word % len(CONTAINERS)], **fill)


def _state_sentence(rng, fill, op: str, s: int, v: int, r: int) -> str:
  return rng.choice(_STATE_FRAMES).format(E=_eq(rng, op, (s, v), r), r=r, **fill)


def _share_sentence(rng, fill, s: int, k: int) -> str:
  return rng.choice(_SHARE_FRAMES).format(E=_eq(rng, "/", (s, k), s // k), r=s // k, **fill)


def _chain(rng, problem: Problem, products_first: bool) -> list[str]:
  """Story order: one count update per event; group products inline or all computed first."""
  fill = problem._fill()
  groups = [e for e in problem.events if e.kind in _GROUP_FRAMES]
  out = [_group_sentence(rng, fill, e) for e in groups] if products_first else []
  s = problem.start
  for e in problem.events:
    if e.kind in _GROUP_FRAMES and not products_first:
      out.append(_group_sentence(rng, fill, e))
    r = _apply(s, e)
    if e.kind == "share":
      out.append(_share_sentence(rng, fill, s, e.x))
    else:
      op = {"add": "+", "add_groups": "+", "sub": "-", "sub_groups": "-", "mul": "*"}[e.kind]
      out.append(_state_sentence(rng, fill, op, s, e.x * e.y if e.kind in _GROUP_FRAMES else e.x, r))
    s = r
  return out


def _gains_losses(rng, problem: Problem, cfg: TaskConfig) -> list[str] | None:
  """Sum all gains and all losses first, then apply them; None where it does not apply (a multiplication,
  or a total outside the number range)."""
  body = [e for e in problem.events if e.kind != "share"]
  if any(e.kind == "mul" for e in body):
    return None
  fill = problem._fill()
  out = [_group_sentence(rng, fill, e) for e in body if e.kind in _GROUP_FRAMES]
  amounts = {"gain": [], "loss": []}
  for e in body:
    amounts["gain" if e.kind in ("add", "add_groups") else "loss"].append(e.x * (e.y or 1))
  totals = {}
  for side, values in amounts.items():
    totals[side] = sum(values)
    if len(values) > 1:
      out.append(rng.choice(_TOTAL_FRAMES[side]).format(E=_eq(rng, "+", values, totals[side]), **fill))
  s, gain, loss = problem.start, totals["gain"], totals["loss"]
  if s + gain > cfg.max_value:
    return None
  updates = [("+", gain), ("-", loss)]
  if s - loss >= 1 and rng.random() < 0.5:
    updates.reverse()
  for op, v in updates:
    if v:
      r = s + v if op == "+" else s - v
      out.append(_state_sentence(rng, fill, op, s, v, r))
      s = r
  if problem.events[-1].kind == "share":
    out.append(_share_sentence(rng, fill, s, problem.events[-1].x))
  return out


def sample_solution(problem: Problem, rng: random.Random, cfg: TaskConfig = TaskConfig(),
                    strategy: str | None = None) -> str:
  """One worked solution: a random valid strategy (or the given one), random wording, then the answer."""
  strategies = list(STRATEGIES) if strategy is None else [strategy]
  while True:
    chosen = rng.choice(strategies)
    if chosen == "gains_losses":
      steps = _gains_losses(rng, problem, cfg)
      if steps is None:
        if strategy is not None:
          raise ValueError("the gains_losses strategy does not apply to this problem")
        strategies.remove(chosen)
        continue
    elif chosen in ("story", "products_first"):
      steps = _chain(rng, problem, products_first=chosen == "products_first")
    else:
      raise ValueError(f"strategy must be one of {STRATEGIES}, got {chosen!r}")
    return " ".join(steps + [ANSWER_SENTENCE.format(answer=problem.answer)])


def solution_variants(problem: Problem, n: int, seed: int = 0, cfg: TaskConfig = TaskConfig(),
                      max_tries: int = 200) -> list[str]:
  """Up to `n` distinct solutions of `problem` (fewer if it has fewer variants), deterministic in `seed`."""
  rng = random.Random(f"variants:{seed}:{problem.key}")
  out: list[str] = []
  for _ in range(max_tries):
    s = sample_solution(problem, rng, cfg)
    if s not in out:
      out.append(s)
      if len(out) == n:
        break
  return out


def solution_for(problem: Problem, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> str:
  """The training solution of a problem: one random variant, fixed by (seed, problem)."""
  return solution_variants(problem, 1, seed, cfg)[0]


# ---- answer checking ----------------------------------------------------------------------------

def extract_answer(text: str) -> int | None:
  """The integer of the first "The answer is N" in `text`, or None."""
  m = _ANSWER_RE.search(text)
  return int(m.group(1)) if m else None


def is_correct(text: str, answer: int) -> bool:
  return extract_answer(text) == answer
