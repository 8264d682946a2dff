"""Crash-safe file writing: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import os
import tempfile
from typing import Iterable


def write_text_atomic(path: str, text: str | Iterable[str]) -> str:
  """Writes `text` (a string or an iterable of chunks) to `path` via temp + rename; returns `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.writelines([text] if isinstance(text, str) else text)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path
