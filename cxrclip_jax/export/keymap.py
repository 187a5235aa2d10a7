"""Strict HF <-> Flax param conversion through an explicit key table.

A table is a tuple of rows `(hf_pattern, flax_pattern, transpose)`; `{i}` stands for a layer index
and must appear in both patterns. Conversion walks the *expected* Flax params (from
`jax.eval_shape` of the model's init), so every param is accounted for; any HF key that is
missing, mis-shaped or left unused is an error naming the key. The vision towers reuse this.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np
from flax import traverse_util


class KeyMismatchError(ValueError):
  """The checkpoint does not fit the key table; the message names the offending keys."""


Row = tuple[str, str, bool]


def _regex(pattern: str) -> re.Pattern:
  parts = [re.escape(p) for p in pattern.split("{i}")]
  return re.compile(r"(\d+)".join(parts) + r"\Z")


def flatten(tree) -> dict[str, np.ndarray]:
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, object]):
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def _name_list(keys: Iterable[str], limit: int = 5) -> str:
  keys = sorted(keys)
  more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
  return ", ".join(repr(k) for k in keys[:limit]) + more


def flax_to_hf_key(flax_path: str, table: Iterable[Row]) -> tuple[str, bool]:
  for hf_pat, flax_pat, transpose in table:
    m = _regex(flax_pat).match(flax_path)
    if m:
      return hf_pat.replace("{i}", m.group(1)) if m.groups() else hf_pat, transpose
  raise KeyMismatchError(f"param {flax_path!r} has no row in the HF key table")


def to_flax(hf: Mapping[str, np.ndarray], table: Iterable[Row], expected_shapes: Mapping[str, tuple],
            *, optional: Iterable[str] = (), dtype=np.float32) -> tuple[dict, list[str]]:
  """HF tensors -> nested Flax params (numpy, `dtype`).

  expected_shapes: flat {flax_path: shape} of the model's params.
  optional: regexes of HF keys that may be present but unused (e.g. an lm_head when only the
    encoder is wanted); they are returned as the second value so callers can report them.
  """
  table = tuple(table)
  flat, used, errors = {}, set(), []
  for path, shape in expected_shapes.items():
    key, transpose = flax_to_hf_key(path, table)
    if key not in hf:
      errors.append(f"missing HF key {key!r} (for param {path})")
      continue
    value = np.asarray(hf[key])
    value = value.T if transpose else value
    if tuple(value.shape) != tuple(shape):
      errors.append(f"HF key {key!r} has shape {tuple(hf[key].shape)}, expected "
                    f"{tuple(shape)[::-1] if transpose else tuple(shape)} (for param {path})")
      continue
    flat[path] = value.astype(dtype)
    used.add(key)
  unused = set(hf) - used
  ignorable = {k for k in unused if any(re.fullmatch(p, k) for p in optional)}
  if errors:
    raise KeyMismatchError(f"{errors[0]}" + (f" (+{len(errors) - 1} more problems)" if len(errors) > 1 else ""))
  if unused - ignorable:
    raise KeyMismatchError(f"unused HF keys: {_name_list(unused - ignorable)}")
  return unflatten(flat), sorted(ignorable)


def to_hf(params, table: Iterable[Row]) -> dict[str, np.ndarray]:
  """Nested Flax params -> {HF key: numpy array} (dtype preserved)."""
  table = tuple(table)
  out = {}
  for path, value in flatten(params).items():
    key, transpose = flax_to_hf_key(path, table)
    if key in out:
      raise KeyMismatchError(f"two params map to HF key {key!r}")
    value = np.asarray(value)
    out[key] = np.ascontiguousarray(value.T if transpose else value)
  return out
