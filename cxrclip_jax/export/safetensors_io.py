"""Minimal safetensors reader/writer on numpy (+ ml_dtypes for bf16), memory-mapped on read.

The `safetensors` package's numpy backend cannot represent bfloat16, and going through torch would
make torch a runtime dependency; the format is a length-prefixed JSON header and raw bytes.
Pickle formats (.bin, .pt, .ckpt) are never read.
"""
from __future__ import annotations

import json
import pathlib
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
  pass


def read(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as read-only memory-mapped numpy arrays."""
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise SafetensorsError(f"{path}: truncated safetensors file (no header)")
    (n,) = struct.unpack("<Q", head)
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if path.stat().st_size > 8 + n else np.zeros(0, np.uint8)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _DTYPES:
      raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    if end > data.size:
      raise SafetensorsError(f"{path}: tensor {name!r} extends past the end of the file (truncated?)")
    out[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def write(path: str | pathlib.Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise SafetensorsError(f"cannot write tensor {name!r} of dtype {a.dtype}")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align tensor data to 8 bytes, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
