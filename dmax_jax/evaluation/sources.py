"""Benchmark records from a local file in the benchmark's public format, or from its public source.

Local files (offline): JSON Lines (`.jsonl`, `.jsonl.gz`: GSM8K's `test.jsonl`, MATH-500's `test.jsonl`,
HumanEval's `HumanEval.jsonl.gz`, EvalPlus' files), a JSON list (`.json`: sanitized MBPP), Parquet (the
Hugging Face Hub's format; needs pyarrow) or a directory of one-record `.json` files (the original MATH
release, e.g. `MATH/test/algebra`). Without a file, records come from the Hugging Face Hub through the
`datasets` library (not a dependency: `pip install datasets`).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from typing import Any

from dmax_jax.errors import InputError


def _json_lines(path: str) -> list[dict[str, Any]]:
  opener = gzip.open if path.endswith(".gz") else open
  records = []
  with opener(path, "rt", encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise InputError(f"{path}: line {number} is not JSON ({e.msg})") from None
  return records


def _json_file(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise InputError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None


def _parquet(path: str) -> list[dict[str, Any]]:
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise InputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or pass a .jsonl file") from None
  return pq.read_table(path).to_pylist()


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of a local benchmark file or directory (see the module docstring)."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.json")))
    if not files:
      raise InputError(f"{path} is a directory without .json files")
    records = [_json_file(f) for f in files]
  elif not os.path.isfile(path):
    raise InputError(f"{path}: no such file")
  elif path.endswith((".jsonl", ".jsonl.gz")):
    records = _json_lines(path)
  elif path.endswith(".parquet"):
    records = _parquet(path)
  elif path.endswith(".json"):
    records = _json_file(path)
  else:
    raise InputError(f"{path}: unknown format; expected .jsonl, .jsonl.gz, .json, .parquet or a directory")
  if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
    raise InputError(f"{path} does not hold a list of records (JSON objects)")
  if not records:
    raise InputError(f"{path} holds no records")
  return records


def hub_records(path: str, name: str | None, split: str, **kwargs: Any) -> list[dict[str, Any]]:
  """`datasets.load_dataset(path, name, split=split, **kwargs)` as a list of dicts."""
  try:
    import datasets
  except ImportError:
    raise InputError(f"the public source of this task is the Hugging Face dataset {path!r}: install `datasets` "
                     "(pip install datasets) or pass --data with a local copy") from None
  return [dict(r) for r in datasets.load_dataset(path, name, split=split, **kwargs)]


def require_fields(records: list[dict[str, Any]], fields: tuple[str, ...], task: str, origin: str) -> None:
  """One-line error naming the first record that lacks a field the task reads."""
  for index, record in enumerate(records):
    missing = [f for f in fields if f not in record]
    if missing:
      raise InputError(f"{origin}: record {index} lacks {', '.join(missing)}, which task {task!r} needs (it has "
                       f"{', '.join(sorted(record)) or 'no fields'})")
