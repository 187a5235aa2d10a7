"""Lexically mined hard negatives (DPR's BM25 negatives, here TF-IDF cosine), numpy only.

For each query, the documents of a pool that share the most weighted words with it and are not
its answer. Cosine normalises length, so short documents that repeat a query's words rank high:
exactly the distractors an impression-only query meets among full reports (impression-only
reports, and reports whose impression is worded alike), which one-error variants of its own
report never show it.
"""
from __future__ import annotations

import collections
import re
from typing import Callable, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
  return _WORD.findall(text.casefold())


def word_key(text: str) -> str:
  """The words of a text, case and punctuation folded: "No acute process.." and "No acute process"
  state the same thing, so neither may be the other's negative."""
  return " ".join(_words(text))


def _tfidf(texts: Sequence[str], vocab: dict[str, int], idf: np.ndarray) -> np.ndarray:
  """(len(texts), V) float32 rows of (1 + log tf) * idf, L2-normalised (out-of-vocabulary words dropped)."""
  out = np.zeros((len(texts), len(vocab)), np.float32)
  for i, text in enumerate(texts):
    for word, n in collections.Counter(w for w in _words(text) if w in vocab).items():
      out[i, vocab[word]] = (1.0 + np.log(n)) * idf[vocab[word]]
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def neighbours(queries: Sequence[str], docs: Sequence[str], allowed: Callable[[int, int], bool], *,
               max_vocab: int = 8192, chunk: int = 512) -> list[int | None]:
  """Per query, the index of its most similar doc j with allowed(query_index, j), or None.

  The vocabulary is the docs' `max_vocab` most frequent words (by document frequency), weighted by
  smoothed idf; ties go to the lower doc index, so the result is deterministic. Memory is
  O(len(docs) * max_vocab): pass a bounded pool, not a 1.6M-report split.
  """
  df = collections.Counter(w for d in docs for w in set(_words(d)))
  words = sorted(df, key=lambda w: (-df[w], w))[:max_vocab]
  vocab = {w: i for i, w in enumerate(words)}
  idf = np.log((1 + len(docs)) / (1 + np.array([df[w] for w in words], np.float32))) + 1.0
  doc_vecs = _tfidf(docs, vocab, idf)
  out: list[int | None] = []
  for start in range(0, len(queries), chunk):
    sim = _tfidf(queries[start:start + chunk], vocab, idf) @ doc_vecs.T  # (chunk, N)
    order = np.argsort(-sim, axis=1, kind="stable")
    for row, ranked in enumerate(order, start):
      out.append(next((int(j) for j in ranked if allowed(row, int(j))), None))
  return out
