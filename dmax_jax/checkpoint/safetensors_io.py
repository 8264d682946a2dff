"""Tensor-by-tensor safetensors reading (memory-mapped, bfloat16 included) with clear errors.

The format is an 8-byte little-endian header length, a JSON header `{name: {dtype, shape,
data_offsets}}`, then the raw bytes. Reading through `np.memmap` keeps one tensor at a time in memory.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

from dmax_jax.errors import InputError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # the limit of the safetensors library


class CheckpointError(InputError):
  """A malformed or incomplete checkpoint; the message names the file or tensor."""


class SafetensorsFile:
  """Lazily readable safetensors file: `names()`, `shape(name)`, `dtype(name)`, `read(name)`."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file (no header)")
      (header_len,) = struct.unpack("<Q", raw)
      if header_len > MAX_HEADER_BYTES or f.read(1) not in (b"{", b""):
        raise CheckpointError(f"{path}: not a safetensors file (it does not start with a header length "
                              "and a JSON header)")
      f.seek(8)
      if 8 + header_len > size:
        raise CheckpointError(f"{path}: truncated safetensors file (header of {header_len} bytes, "
                              f"file of {size})")
      try:
        header = json.loads(f.read(header_len))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
    self.metadata = header.pop("__metadata__", None) or {}
    self._entries = header
    self._data_start = 8 + header_len
    for name, entry in header.items():
      if entry.get("dtype") not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
      begin, end = entry["data_offsets"]
      expected = int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
      if end - begin != expected:
        raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes, its shape "
                              f"{entry['shape']} needs {expected}")
      if self._data_start + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte "
                              f"{self._data_start + end}, the file has {size}")

  def names(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    return DTYPES[self._entries[name]["dtype"]]

  def read(self, name: str) -> np.ndarray:
    """The tensor as a read-only memory-mapped array (no copy until used)."""
    entry = self._entries[name]
    begin, _ = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if int(np.prod(shape, dtype=np.int64)) == 0:
      return np.zeros(shape, DTYPES[entry["dtype"]])
    return np.memmap(self.path, dtype=DTYPES[entry["dtype"]], mode="r",
                     offset=self._data_start + begin, shape=shape)


def checkpoint_files(directory: str) -> list[str]:
  """The safetensors files of a Hugging Face checkpoint directory (sharded via the index, or single)."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index_path}: no 'weight_map'")
    files = sorted(set(weight_map.values()))
    for name in files:
      if not os.path.exists(os.path.join(directory, name)):
        raise CheckpointError(f"{index_path} lists {name}, which is missing from {directory}")
    return [os.path.join(directory, name) for name in files]
  files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
  if not files:
    raise CheckpointError(f"no *.safetensors files in {directory}")
  return [os.path.join(directory, n) for n in files]


def iter_tensors(directory: str) -> Iterator[tuple[str, SafetensorsFile]]:
  """Yields `(tensor name, file holding it)` over every file of the checkpoint; duplicates are errors."""
  seen: dict[str, str] = {}
  for path in checkpoint_files(directory):
    f = SafetensorsFile(path)
    for name in f.names():
      if name in seen:
        raise CheckpointError(f"tensor {name!r} appears in both {seen[name]} and {path}")
      seen[name] = path
      yield name, f


class SafetensorsWriter:
  """Writes one safetensors file tensor by tensor, never holding more than the tensor being written.

  Names and byte sizes are declared up front (they fix the data offsets); the JSON header also needs
  the shapes, so space for it is reserved before the data and it is written last, padded with spaces
  (valid JSON whitespace, as the reference writer pads to 8-byte alignment).
  """

  def __init__(self, path: str, nbytes: dict[str, int], metadata: dict[str, str] | None = None):
    self.path, self._metadata = path, metadata or {}
    self._order = list(nbytes)
    self._offsets, end = {}, 0
    for name, size in nbytes.items():
      self._offsets[name] = (end, end + size)
      end += size
    bound = {name: {"dtype": "BF16", "shape": [10**19] * 4, "data_offsets": [10**19, 10**19]}
             for name in nbytes}
    self._header_len = -(-len(self._header_bytes(bound)) // 8) * 8
    self._entries: dict[str, dict] = {}
    self._file = open(path, "wb")
    self._file.seek(8 + self._header_len)

  def _header_bytes(self, entries: dict) -> bytes:
    header = {"__metadata__": self._metadata, **entries} if self._metadata else entries
    return json.dumps(header, separators=(",", ":")).encode()

  def write(self, name: str, array: np.ndarray) -> None:
    """Appends `array` as tensor `name` (declared order; dtype must be one safetensors knows)."""
    begin, end = self._offsets[name]
    if len(self._entries) >= len(self._order) or self._order[len(self._entries)] != name:
      raise ValueError(f"{self.path}: tensor {name!r} written out of the declared order")
    if array.nbytes != end - begin or array.dtype not in DTYPE_NAMES:
      raise ValueError(f"{self.path}: tensor {name!r} ({array.dtype}, {array.nbytes} bytes) does not "
                       f"match its declared size of {end - begin} bytes")
    self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    self._entries[name] = {"dtype": DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                           "data_offsets": [begin, end]}

  def __enter__(self) -> "SafetensorsWriter":
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:
      self._file.close()

  def close(self) -> None:
    """Writes the header; raises if a declared tensor was never written."""
    missing = [n for n in self._offsets if n not in self._entries]
    if missing:
      self._file.close()
      raise ValueError(f"{self.path}: {len(missing)} declared tensor(s) never written, e.g. {missing[0]!r}")
    header = self._header_bytes(self._entries)
    self._file.seek(0)
    self._file.write(struct.pack("<Q", self._header_len) + header.ljust(self._header_len, b" "))
    self._file.close()
