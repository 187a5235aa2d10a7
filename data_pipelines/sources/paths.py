"""Path safety: every image path in a manifest is relative to the dataset root and stays inside it.

Two checks, at two times. `check_relative` is lexical and cheap, run on every path when the manifest
is read: absolute paths and `..` components are rejected outright (a manifest is data, and data must
not name arbitrary files). `resolve_under` runs when a file is opened, in the worker that opens it,
and resolves symlinks: a link inside the root that points outside it is rejected too.
"""
from __future__ import annotations

import os
import pathlib
import re

_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]|^\\\\")


class UnsafePath(ValueError):
  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def check_relative(rel: str) -> None:
  """Raises UnsafePath unless `rel` is a plain relative path without `..`."""
  if not rel or "\x00" in rel:
    raise UnsafePath(f"invalid path {rel!r}")
  if rel.startswith(("/", "~")) or _WINDOWS_ABSOLUTE.match(rel):
    raise UnsafePath(f"absolute path {rel!r} (paths must be relative to the root)")
  if ".." in re.split(r"[\\/]", rel):
    raise UnsafePath(f"path {rel!r} leaves the dataset root")


def resolve_under(root: str | os.PathLike, rel: str) -> pathlib.Path:
  """The real path of root/rel, following symlinks; raises UnsafePath if it lands outside root."""
  check_relative(rel)
  real_root = pathlib.Path(os.path.realpath(root))
  real = pathlib.Path(os.path.realpath(real_root / rel))
  if real != real_root and real_root not in real.parents:
    raise UnsafePath(f"path {rel!r} is a symlink leading outside the dataset root")
  return real
