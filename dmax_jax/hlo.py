"""Reading an XLA program's HLO text: its collectives and its matmul FLOPs per device.

For every collective instruction: its kind, the bytes of its result shape, the size of its replica
groups, the estimated bytes each device sends over the wire (ring algorithms: all-gather and all-to-all
`(n-1)/n * result`, reduce-scatter `(n-1) * result`, all-reduce `2 (n-1)/n * result`,
collective-permute `result`), and how often it runs per call: the product of the known trip counts of
the `while` loops around it (a `scan` over 19 layers runs its body's collectives 19 times).

`hlo_after_partitioning` compiles a lowered program and returns its module right after SPMD
partitioning: XLA:CPU later widens every bf16 collective to f32 (it has no bf16 reductions), so the
post-partitioning module is the one whose bytes a TPU or GPU would move.

`summarize` groups them per kind twice: every instruction once ("as written", loop bodies counted once,
the convention of XLA's own cost analysis) and weighted by its trip count ("per call").

`dot_flops_by_op_name` counts `2 * prod(result) * prod(contracted)` for every `dot` of a partitioned module,
weighted by trip count: the matmul work of one device.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import tempfile
from typing import Any, Callable

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "ragged-all-to-all",
         "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{([\d,\s]*)\}")
_NAMED_ARRAY = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[a-z]+\d*[a-z0-9]*\[([\d,]*)\]")
_DOT = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[a-z]+\d*[a-z0-9]*\[([\d,]*)\]\S*\s+dot\((%?[\w.\-]+)")
_LHS_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_S32_CONSTANT = re.compile(r"= s32\[\] constant\((\d+)\)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\([^)]*\))?(?:\s*\{([^}]*)\})?")


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  result_bytes: int
  group_size: int
  trip_count: int
  computation: str
  op_name: str
  text: str

  @property
  def wire_bytes(self) -> float:
    """Estimated bytes one device sends for one execution."""
    n = max(self.group_size, 1)
    if self.kind == "all-reduce":
      return 2 * (n - 1) / n * self.result_bytes
    if self.kind == "reduce-scatter":
      return (n - 1) * self.result_bytes
    if self.kind == "collective-permute":
      return float(self.result_bytes)
    return (n - 1) / n * self.result_bytes


def shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO shape (`f32[8,128]{1,0}` or a tuple of them); layouts and token types ignored."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape_text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line: str) -> int:
  if m := _MESH_GROUPS.search(line):  # mesh['axis_0'=8,'axis_1'=4] {'axis_0'}: groups span the named axes
    sizes = {k.strip("'"): int(v) for k, v in (a.split("=") for a in m.group(1).split(","))}
    named = [a.strip().strip("'") for a in m.group(2).split(",")] if m.group(2) else list(sizes)
    return math.prod(sizes[a] for a in named)
  if m := _IOTA_GROUPS.search(line):
    return int(m.group(2))
  if m := _LIST_GROUPS.search(line):
    return len([x for x in m.group(1).split(",") if x.strip()])
  return 2 if "source_target_pairs" in line else 1


def _base_kind(opcode: str) -> str | None:
  for kind in sorted(KINDS, key=len, reverse=True):
    if opcode in (kind, kind + "-start"):
      return kind
  return None


@dataclasses.dataclass
class Module:
  """Computations of an HLO module (their instruction lines), how often each runs per call, the entry's name."""
  bodies: dict[str, list[str]]
  multiplier: dict[str, int]
  entry: str


def parse_module(hlo_text: str) -> Module:
  bodies: dict[str, list[str]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    if current is None:
      if m := _COMPUTATION.match(line):
        current = m.group(1)
        bodies[current] = []
        if line.startswith("ENTRY"):
          entry = current
    elif line.strip() == "}":
      current = None
    else:
      bodies[current].append(line)
  calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  for name, lines in bodies.items():
    for line in lines:
      trips = int(m.group(1)) if (m := _TRIP_COUNT.search(line)) else _counted_loop_bound(line, bodies)
      for callee in _CALLEE.findall(line):
        calls[name].append((callee, trips if " while(" in line else 1))
      if m := _BRANCHES.search(line):
        calls[name] += [(c.strip().lstrip("%"), 1) for c in m.group(1).split(",")]
  multiplier: dict[str, int] = collections.defaultdict(int)

  def visit(name: str, factor: int) -> None:
    multiplier[name] += factor
    for callee, trips in calls.get(name, ()):
      visit(callee, factor * trips)

  entry = entry if entry is not None else next(iter(bodies))
  visit(entry, 1)
  return Module(bodies, multiplier, entry)


def parse(hlo_text: str) -> list[Collective]:
  """Every collective of the module with its trip count (async `-done` halves are not counted twice)."""
  module = parse_module(hlo_text)
  found = []
  for name, lines in module.bodies.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m or (kind := _base_kind(m.group(2))) is None:
        continue
      result = m.group(1)
      if m.group(2).endswith("-start") and result.startswith("("):  # (operands, outputs[, scratch])
        result = _async_output(result)
      op_name = m.group(1) if (m := _OP_NAME.search(line)) else ""
      found.append(Collective(kind, shape_bytes(result), _group_size(line), max(module.multiplier[name], 1),
                              name, op_name, line.strip()[:300]))
  return found


def dot_flops_by_op_name(hlo_text: str) -> dict[str, int]:
  """Matmul FLOPs of one execution of the module per op_name: every `dot` counts
  `2 * prod(result) * prod(lhs contracted)`, weighted by its trip count."""
  module = parse_module(hlo_text)
  shapes: dict[str, list[int]] = {}
  for lines in module.bodies.values():
    for line in lines:
      if m := _NAMED_ARRAY.match(line):
        shapes[m.group(1)] = [int(d) for d in m.group(2).split(",") if d]
  out: dict[str, int] = collections.defaultdict(int)
  for name, lines in module.bodies.items():
    for line in lines:
      if not (m := _DOT.match(line)):
        continue
      lhs = shapes.get(m.group(3).lstrip("%"))
      if lhs is None:
        raise ValueError(f"dot operand {m.group(3)} has no recorded shape")
      contracting = [int(d) for d in c.group(1).split(",") if d] if (c := _LHS_CONTRACTING.search(line)) else []
      result = [int(d) for d in m.group(2).split(",") if d]
      op_name = op.group(1) if (op := _OP_NAME.search(line)) else ""
      out[op_name] += (2 * math.prod(result) * math.prod(lhs[d] for d in contracting)
                       * max(module.multiplier[name], 1))
  return dict(out)


def wire_bytes_by(collectives: list[Collective], classify: Callable[[Collective], str]) -> dict[str, float]:
  """Wire bytes per device per call, summed per `classify(collective)` label."""
  out: dict[str, float] = collections.defaultdict(float)
  for c in collectives:
    out[classify(c)] += c.wire_bytes * c.trip_count
  return dict(out)


def _counted_loop_bound(while_line: str, bodies: dict[str, list[str]]) -> int:
  """Trip count of a `while` whose condition is `counter < constant` (how jax lowers `scan` and
  `fori_loop`), for modules dumped before XLA annotates `known_trip_count`; 1 when not recognised."""
  if " while(" not in while_line or not (m := re.search(r"condition=%?([\w.\-]+)", while_line)):
    return 1
  condition = bodies.get(m.group(1), [])
  bound = [int(c.group(1)) for line in condition if (c := _S32_CONSTANT.search(line))]
  if len(bound) == 1 and any("direction=LT" in line for line in condition):
    return bound[0]
  return 1


def _async_output(tuple_shape: str) -> str:
  """The output element of an async collective's `(operand, output, ...)` result tuple."""
  depth, parts, start = 0, [], 1
  for i, ch in enumerate(tuple_shape):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 1:
      parts.append(tuple_shape[start:i])
      start = i + 1
  parts.append(tuple_shape[start:-1])
  return parts[1] if len(parts) > 1 else parts[0]


def hlo_after_partitioning(lowered, *, optimize_machine_code: bool = True) -> tuple[Any, str]:
  """`(compiled, HLO text of the module right after SPMD partitioning)` of a `jax.stages.Lowered`.

  `optimize_machine_code=False` skips the backend's (LLVM's) optimization: a third faster to compile, the same
  HLO and buffers, a slower executable — for reading the program, not running it."""
  options = {"xla_dump_hlo_pass_re": "spmd-partitioning"}
  if not optimize_machine_code:
    options["xla_backend_optimization_level"] = 0
  with tempfile.TemporaryDirectory() as dump:
    compiled = lowered.compile({**options, "xla_dump_to": dump})
    names = sorted(n for n in os.listdir(dump) if "after_spmd-partitioning" in n)
    if not names:
      raise RuntimeError("XLA wrote no module after spmd-partitioning (single-device program?)")
    with open(os.path.join(dump, names[-1])) as f:
      return compiled, f.read()


def summarize(collectives: list[Collective]) -> dict[str, dict[str, float]]:
  """Per kind: `count`, `result_bytes`, `wire_bytes` (each instruction once) and `count_per_call`,
  `result_bytes_per_call`, `wire_bytes_per_call` (weighted by trip count)."""
  out: dict[str, dict[str, float]] = {}
  for c in collectives:
    row = out.setdefault(c.kind, dict.fromkeys(
        ("count", "result_bytes", "wire_bytes", "count_per_call", "result_bytes_per_call",
         "wire_bytes_per_call"), 0))
    row["count"] += 1
    row["result_bytes"] += c.result_bytes
    row["wire_bytes"] += c.wire_bytes
    row["count_per_call"] += c.trip_count
    row["result_bytes_per_call"] += c.result_bytes * c.trip_count
    row["wire_bytes_per_call"] += c.wire_bytes * c.trip_count
  return out


def largest(collectives: list[Collective], n: int = 10) -> list[Collective]:
  return sorted(collectives, key=lambda c: c.result_bytes * c.trip_count, reverse=True)[:n]
