"""Image<->report retrieval metrics, pure numpy (big_vision's image_text_retrieval style).

Identical report texts are de-duplicated into one candidate: an image's report is "found" when
its text is retrieved, and a text query is answered by any image that carries it. Clinically
equivalent retrieval counts a hit when the retrieved item's extracted finding set equals the
query's. Ties count against the model: a candidate scoring the same as the correct one ranks
above it, so a constant embedding (every score tied) ranks every correct item last — the worst
score, never chance or better. Non-finite embeddings or scores are an error, never a score.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

KS = (1, 5, 10)


class NonFiniteError(ValueError):
  pass


def check_finite(name: str, **arrays: np.ndarray) -> None:
  """One-line error naming `name` and how many rows of each array hold a NaN or an infinity."""
  bad = {k: int((~np.isfinite(np.asarray(v, np.float64))).reshape(len(v), -1).any(axis=1).sum())
         for k, v in arrays.items()}
  bad = {k: n for k, n in bad.items() if n}
  if bad:
    counts = ", ".join(f"{n} of {len(arrays[k])} {k} rows" for k, n in bad.items())
    raise NonFiniteError(f"{name}: non-finite values in {counts}; the model diverged or its inputs are bad")


def ranks(sim: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """1-based rank of the best correct candidate per query. sim, correct: (Nq, Nc)."""
  if not correct.any(axis=1).all():
    raise ValueError("every query needs at least one correct candidate")
  best = np.where(correct, sim, -np.inf).max(axis=1, keepdims=True)  # (Nq, 1)
  # Incorrect candidates scoring at least as high as the best correct one are ranked above it.
  return 1 + ((sim >= best) & ~correct).sum(axis=1)


def chance_recall(correct: np.ndarray, k: int) -> float:
  """Expected Recall@k of a random ranking: mean over queries of 1 - C(N-c, k) / C(N, k)."""
  n = correct.shape[1]
  c = correct.sum(axis=1)
  # prod_{i<k} (N-c-i)/(N-i) = probability that the first k candidates are all incorrect.
  i = np.arange(min(k, n))
  miss = np.prod(np.clip((n - c[:, None] - i) / (n - i), 0, None), axis=1)
  return float(np.mean(1 - miss))


def summarize(r: np.ndarray, correct: np.ndarray) -> dict[str, float]:
  out = {f"R@{k}": float(np.mean(r <= k)) for k in KS}
  out.update(mean_rank=float(np.mean(r)), median_rank=float(np.median(r)))
  out["chance"] = {f"R@{k}": chance_recall(correct, k) for k in KS}
  return out


def _finding_keys(labels: np.ndarray) -> np.ndarray:
  """One integer per row identifying its set of positive findings (labels (N, F) in {1, 0, -1})."""
  bits = (labels == 1).astype(np.int64) << np.arange(labels.shape[1], dtype=np.int64)
  return bits.sum(axis=1)


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_ids: np.ndarray,
                      labels: np.ndarray | None = None, similarity=None, name: str = "retrieval") -> dict[str, dict]:
  """Metrics for N image-report pairs (row i of each array belongs to study i).

  image_emb, text_emb: (N, D); text_ids: (N,) equal for identical report texts;
  labels: optional (N, F) finding labels for the clinically equivalent variants;
  similarity: f(image_emb, text_emb) -> (Ni, Nt) scores (default: cosine).
  name: what is evaluated (e.g. the split), for the error on non-finite inputs.
  """
  check_finite(name, image_embeddings=image_emb, text_embeddings=text_emb)
  text_ids = np.asarray(text_ids)
  uniq, first, inverse = np.unique(text_ids, return_index=True, return_inverse=True)
  sim = (similarity or cosine)(image_emb, text_emb[first])  # (N images, U unique texts)
  check_finite(name, similarity_rows=sim)  # finite features can still overflow a dot product
  exact = inverse[:, None] == np.arange(len(uniq))[None, :]
  out = {}
  r = ranks(sim, exact)
  out["i2t"] = summarize(r, exact)
  r = ranks(sim.T, exact.T)
  out["t2i"] = summarize(r, exact.T)
  if labels is not None:
    keys = _finding_keys(np.asarray(labels))
    clinical = keys[:, None] == keys[first][None, :]
    out["i2t_clinical"] = summarize(ranks(sim, clinical), clinical)
    out["t2i_clinical"] = summarize(ranks(sim.T, clinical.T), clinical.T)
  out["n"] = {"images": int(len(text_ids)), "unique_texts": int(len(uniq))}
  return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return a @ b.T


def format_table(metrics: Mapping[str, dict], title: str = "") -> str:
  """A plain-text table: one row per task, each figure beside its chance level."""
  rows = [t for t in ("i2t", "t2i", "i2t_clinical", "t2i_clinical") if t in metrics]
  head = f"{'task':14s}" + "".join(f"{'R@' + str(k):>16s}" for k in KS) + f"{'mean rank':>11s}{'median':>8s}"
  lines = ([title] if title else []) + [head]
  for t in rows:
    m = metrics[t]
    cells = "".join(f"{100 * m[f'R@{k}']:7.1f} ({100 * m['chance'][f'R@{k}']:5.1f})" for k in KS)
    lines.append(f"{t:14s}{cells}{m['mean_rank']:11.1f}{m['median_rank']:8.0f}")
  lines.append("R@k in %, chance level in parentheses")
  return "\n".join(lines)
