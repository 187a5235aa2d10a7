"""Reading the CSV tables datasets ship (plain or .gz), robustly and with one-line errors."""
from __future__ import annotations

import csv
import gzip
import pathlib
import sys
from typing import Iterator, Sequence

from data_pipelines import reports
from data_pipelines.sources.schema import SourceError

# Report cells can be long (a whole free-text report); the csv module's default cap is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def find(root: pathlib.Path, *patterns: str, required: bool = True) -> pathlib.Path | None:
  """The first file under root matching a glob pattern (plain before .gz); None if optional."""
  for pattern in patterns:
    for candidate in (pattern, pattern + ".gz"):
      hits = sorted(root.glob(candidate))
      if hits:
        return hits[-1]  # Names carry dates/versions; the newest sorts last.
  if required:
    raise SourceError(f"{root}: no file matching {' or '.join(patterns)} (plain or .gz)")
  return None


def _lines(path: pathlib.Path) -> Iterator[str]:
  # Line by line, each decoded leniently (UTF-8, stray bytes read as cp1252): one bad byte in a
  # 1 GB table must not stop it, nor force the whole file into memory to decode it at once.
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    for raw in f:
      yield reports.decode_text(raw)


def rows(path: pathlib.Path, required: Sequence[str] = ()) -> Iterator[dict[str, str]]:
  """Yields each row as {column: text}; SourceError names the file if a required column is absent."""
  try:
    reader = csv.DictReader(_lines(path))
    columns = reader.fieldnames or []
  except (OSError, EOFError, csv.Error) as e:
    raise SourceError(f"{path}: unreadable table: {e}") from None
  missing = [c for c in required if c not in columns]
  if missing:
    raise SourceError(f"{path.name}: missing column(s) {', '.join(missing)} (has: {', '.join(columns)})")
  try:
    for row in reader:
      yield {k: (v or "") for k, v in row.items() if k is not None}
  except (OSError, EOFError, csv.Error) as e:
    raise SourceError(f"{path.name}, line {reader.line_num}: {e}") from None
