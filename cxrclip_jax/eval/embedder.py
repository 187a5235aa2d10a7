"""Embedding many texts with a text encoder on a device mesh: sort by length, bucket, batch.

Texts are tokenized once, sorted by token length (as llm2vec does) so that padding is small,
and padded to a few bucket lengths so that only a handful of shapes are compiled. Each batch is
split over the mesh's data axes; params may be sharded any way the rules say. Results come back
in input order, float32.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
import tqdm

from cxrclip_jax import sharding
from cxrclip_jax.models.llm_encoder import check_token_ids
from data_pipelines.tokenization import Llm2VecTokenizer


def bucket_length(n: int, max_length: int) -> int:
  """Padded length for a batch whose longest text has n tokens: a multiple of 16 up to 128, of 32
  up to 256, then of 64 — little padding waste for a handful of compiled shapes."""
  step = 16 if n <= 128 else 32 if n <= 256 else 64
  return min(-(-n // step) * step, max(max_length, n))


class TextEmbedder:
  """`embed(texts)` -> (N, D) float32 with a fixed module, params and tokenizer."""

  def __init__(self, module, params, tokenizer: Llm2VecTokenizer, mesh=None, batch_size: int = 32,
               rules=sharding.DEFAULT_RULES):
    self.module, self.tokenizer, self.rules = module, tokenizer, rules
    self.mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1})
    divisor = sharding.batch_divisor(self.mesh)
    self.batch_size = -(-batch_size // divisor) * divisor  # a multiple of the data-parallel size
    self.params = params
    self._apply = jax.jit(lambda p, ids, am, em: module.apply({"params": p}, ids, am, em))

  def embed(self, texts: Sequence[str], instructions: Sequence[str] | str = "", *, progress: bool = False,
            desc: str = "embedding") -> np.ndarray:
    rows = self.tokenizer.encode_rows(texts, instructions)
    check_token_ids(np.concatenate([np.asarray(r, np.int64) for r, _ in rows] or [np.zeros(0)]),
                    self.module.config.vocab_size)
    order = np.argsort([-len(r) for r, _ in rows], kind="stable")
    out: np.ndarray | None = None
    with sharding.activate(self.mesh, self.rules), tqdm.tqdm(total=len(rows), desc=desc, disable=not progress,
                                                             unit="text") as bar:
      for start in range(0, len(rows), self.batch_size):
        idx = order[start:start + self.batch_size]
        batch_rows = [rows[i] for i in idx]
        length = bucket_length(len(batch_rows[0][0]), self.tokenizer.max_length)
        # Pad the last batch with empty rows (all-zero masks) so its shape is one we compiled.
        batch_rows += [([], 0)] * (self.batch_size - len(batch_rows))
        batch = sharding.global_batch_from_full(self.tokenizer.pad(batch_rows, length), self.mesh)
        emb = sharding.to_host(self._apply(self.params, batch["input_ids"], batch["attention_mask"],
                                           batch["embed_mask"])).astype(np.float32)
        if out is None:
          out = np.zeros((len(rows), emb.shape[-1]), np.float32)
        out[idx] = emb[:len(idx)]
        bar.update(len(idx))
    return out if out is not None else np.zeros((0, 0), np.float32)
