"""Frozen-LLM text embeddings computed once and stored in the workdir (text_mode="cached").

The file name is a content hash of everything the embeddings depend on: the weights and tokenizer
files (bytes, not names or dates), pooling, attention direction, instruction, chat wrapper,
max_length, dtype, the number of layers used, and the texts themselves. Any change gives a new key, so a stale cache is never reused.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Sequence

import numpy as np

from cxrclip_jax.export import hf
from data_pipelines.assets import sha256_file

_TOKENIZER_FILES = hf.TOKENIZER_FILES[:-1]  # generation_config.json does not affect embeddings


def cache_key(model_dir, texts: Sequence[str], *, pooling: str, bidirectional: bool, instruction: str,
              max_length: int, dtype: str, num_layers: int | None = None, wrapper: str = "auto") -> str:
  model_dir = pathlib.Path(model_dir)
  h = hashlib.sha256()
  # "tokenization" names the tokenizer implementation: 2 = the directory's own tokenizer.json
  # (data_pipelines.dir_tokenizer); caches from transformers' AutoTokenizer (1) are not reused.
  parts = {"tokenization": 2, "pooling": pooling, "bidirectional": bidirectional, "instruction": instruction,
           "max_length": max_length, "dtype": dtype, "num_layers": num_layers, "wrapper": wrapper,
           "config": json.loads((model_dir / "config.json").read_text()),
           "weights": [sha256_file(p) for p in hf.weight_files(model_dir)],
           "tokenizer": {n: sha256_file(model_dir / n) for n in _TOKENIZER_FILES if (model_dir / n).is_file()}}
  h.update(json.dumps(parts, sort_keys=True).encode())
  for t in texts:
    h.update(t.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
  return h.hexdigest()[:32]


def cached_embeddings(cache_dir, texts: Sequence[str], embed_fn, *, write: bool = True, **key_args) -> np.ndarray:
  """(len(texts), D) float32 for `texts`, from `cache_dir` when the key matches, else computed by
  `embed_fn(unique_texts) -> (U, D)` (each distinct text embedded once) and stored (by one
  process only: `write`)."""
  cache_dir = pathlib.Path(cache_dir)
  key = cache_key(texts=texts, **key_args)
  path = cache_dir / f"{key}.npy"
  if path.is_file():
    emb = np.load(path)
    if emb.shape[0] == len(texts):
      return emb
  unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
  emb = np.asarray(embed_fn(list(unique)), np.float32)[inverse]
  if not write:
    return emb
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npy")
  np.save(tmp, emb)
  tmp.replace(path)  # atomic: an interrupted run never leaves a half-written cache behind
  return emb
