"""Text-task metrics of a report encoder (LLM2VEC4CXR's text evaluations), pure numpy.

The sets are `data_pipelines.text_tasks.eval_sets`: instructed retrieval (R@k, ties counted against
the query, as `retrieval.ranks` does) and multiple choice (MC4: correct only when the right option
is *strictly* the most similar, so a constant embedding scores 0, never chance). Every figure comes
with its chance level. Non-finite embeddings are an error naming the task, never a score.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from cxrclip_jax.eval.retrieval import KS, chance_recall, check_finite, cosine, ranks

# embed_fn(texts, instructions) -> (N, D): one instruction per text ("" for none).
EmbedFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def _correct_matrix(answers: Sequence, n_candidates: int) -> np.ndarray:
  """(Q, N) bool from per-query answers: an index, or a collection of indices (several correct)."""
  correct = np.zeros((len(answers), n_candidates), bool)
  for i, a in enumerate(answers):
    correct[i, list(a) if isinstance(a, Iterable) else [a]] = True
  return correct


def score_retrieval(query_emb: np.ndarray, cand_emb: np.ndarray, answers: Sequence, ks: Sequence[int] = KS, *,
                    name: str = "retrieval") -> dict:
  """R@k of queries (Q, D) against candidates (N, D) by cosine similarity.

  answers: per query, the index of its correct candidate, or a collection of indices when several
  are correct (the best-ranked one counts). A wrong candidate tied with the best correct one ranks
  above it. chance: the expected R@k of a random ranking of the same candidates.
  """
  query_emb, cand_emb = np.asarray(query_emb, np.float64), np.asarray(cand_emb, np.float64)
  out = {f"R@{k}": None for k in ks}
  out.update(chance={f"R@{k}": None for k in ks}, n=len(answers), candidates=len(cand_emb))
  if not len(answers):
    return out
  check_finite(name, query_embeddings=query_emb, candidate_embeddings=cand_emb)
  correct = _correct_matrix(answers, len(cand_emb))
  sim = cosine(query_emb, cand_emb)  # (Q, N)
  check_finite(name, similarity_rows=sim)
  r = ranks(sim, correct)
  for k in ks:
    out[f"R@{k}"] = float(np.mean(r <= k))
    out["chance"][f"R@{k}"] = chance_recall(correct, k)
  return out


def score_choice(query_emb: np.ndarray, option_emb: np.ndarray, answers: Sequence[int], *,
                 option_kinds: Sequence[Sequence[str]] | None = None, query_kinds: Sequence[str] | None = None,
                 name: str = "choice") -> dict:
  """Multiple-choice accuracy: queries (Q, D), options (Q, K, D), answers (Q,) option indices.

  Item i is right when cosine(query, correct option) is strictly above every other option's.
  by_error_kind[kind]: over every (item, wrong option of that kind), the fraction where the correct
  option scores strictly higher, chance 1/2 — which errors the encoder tells apart.
  by_query_kind[kind]: item accuracy over the items whose query is of that kind.
  """
  query_emb, option_emb = np.asarray(query_emb, np.float64), np.asarray(option_emb, np.float64)
  n_items = len(answers)
  n_options = option_emb.shape[1] if option_emb.ndim == 3 else 0
  out = {"accuracy": None, "chance": 1.0 / n_options if n_options else None, "n": n_items}
  if not n_items:
    return out
  check_finite(name, query_embeddings=query_emb, option_embeddings=option_emb.reshape(-1, option_emb.shape[-1]))
  q = query_emb / np.maximum(np.linalg.norm(query_emb, axis=-1, keepdims=True), 1e-12)
  o = option_emb / np.maximum(np.linalg.norm(option_emb, axis=-1, keepdims=True), 1e-12)
  sim = np.einsum("qd,qkd->qk", q, o)  # (Q, K)
  check_finite(name, similarity_rows=sim)
  answers = np.asarray(answers)
  right = sim[np.arange(n_items), answers][:, None]  # (Q, 1)
  wrong = np.arange(n_options)[None, :] != answers[:, None]  # (Q, K)
  beats = right > sim  # strict: a tie is a miss
  item_ok = (beats | ~wrong).all(axis=1)
  out["accuracy"] = float(item_ok.mean())
  if option_kinds is not None:
    kinds = np.asarray(option_kinds, dtype=object)
    out["by_error_kind"] = {}
    for kind in sorted(set(kinds[wrong].tolist())):
      sel = wrong & (kinds == kind)
      out["by_error_kind"][kind] = {"accuracy": float(beats[sel].mean()), "chance": 0.5, "n": int(sel.sum())}
  if query_kinds is not None:
    qk = np.asarray(query_kinds, dtype=object)
    out["by_query_kind"] = {k: {"accuracy": float(item_ok[qk == k].mean()), "n": int((qk == k).sum())}
                            for k in sorted(set(qk.tolist()))}
  return out


def _is_choice(s) -> bool:
  return hasattr(s, "options")


def set_texts(s) -> list[tuple[str, str]]:
  """(text, instruction) pairs one set embeds: queries with its instruction, the rest without."""
  docs = [o for item in s.options for o in item] if _is_choice(s) else list(s.candidates)
  return [(q, s.instruction) for q in s.queries] + [(d, "") for d in docs]


def evaluate_sets(embed_fn: EmbedFn, sets: Mapping[str, object]) -> dict[str, dict]:
  """Metrics per set (RetrievalSet / ChoiceSet of `data_pipelines.text_tasks`), name -> metrics.

  Every distinct (text, instruction) of all sets is embedded once, in one `embed_fn` call: the sets
  share most of their texts (reports, sentences), and one call lets the embedder sort and batch
  them all by length.
  """
  index: dict[tuple[str, str], int] = {}
  for s in sets.values():
    for pair in set_texts(s):
      index.setdefault(pair, len(index))
  pairs = list(index)
  emb = np.asarray(embed_fn([t for t, _ in pairs], [i for _, i in pairs])) if pairs else np.zeros((0, 1))
  if emb.ndim != 2 or len(emb) != len(pairs):
    raise ValueError(f"embed_fn returned shape {emb.shape} for {len(pairs)} texts; expected ({len(pairs)}, D)")

  def rows(texts, instruction):  # (len(texts), D)
    return emb[[index[(t, instruction)] for t in texts]].reshape(-1, emb.shape[1])

  out = {}
  for name, s in sets.items():
    queries = rows(s.queries, s.instruction)
    if _is_choice(s):
      k = len(s.options[0]) if s.options else 0
      options = rows([o for item in s.options for o in item], "").reshape(len(s.options), k, emb.shape[1])
      out[name] = score_choice(queries, options, s.answers, option_kinds=s.option_kinds, query_kinds=s.query_kinds,
                               name=name)
      if out[name]["chance"] is None:
        out[name]["chance"] = s.chance() or None
    else:
      out[name] = score_retrieval(queries, rows(s.candidates, ""), s.answers, name=name)
      if not s.queries:  # no queries: the chance level is still the set's
        out[name]["chance"] = {f"R@{k}": s.chance(k) for k in KS}
  return out


def limit_queries(sets: Mapping[str, object], n: int | None) -> dict[str, object]:
  """The first n queries (items) of every set; candidates are kept, so the figures estimate the
  full sets' (same pool, same chance level), only noisier."""
  if n is None:
    return dict(sets)
  out = {}
  for name, s in sets.items():
    fields = ("queries", "answers") + (("options", "option_kinds", "query_kinds") if _is_choice(s) else ())
    out[name] = dataclasses.replace(s, **{f: getattr(s, f)[:n] for f in fields})
  return out


# ---- Table -----------------------------------------------------------------------------------------

# (task, metric) rows of the table: findings -> impression in full, the others at R@1.
TABLE_ROWS = (("findings_to_impression", "R@1"), ("findings_to_impression", "R@5"), ("findings_to_impression", "R@10"),
              ("abbreviated_to_expanded_sentence", "R@1"), ("expanded_to_abbreviated_sentence", "R@1"),
              ("abbreviated_to_expanded_report", "R@1"), ("expanded_to_abbreviated_report", "R@1"),
              ("impression_to_report", "R@1"), ("error_mc4", "accuracy"))


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f}"


def _cell(m: Mapping | None, metric: str) -> str:
  if m is None:
    return "—"
  if metric == "accuracy":
    return f"acc {_pct(m.get('accuracy'))} ({_pct(m.get('chance'))})"
  if metric.startswith("vs "):  # an MC4 error kind: pairwise, chance 50 %
    k = (m.get("by_error_kind") or {}).get(metric[3:])
    return "—" if k is None else f"{_pct(k['accuracy'])} ({_pct(k['chance'])})"
  return f"{metric} {_pct(m.get(metric))} ({_pct((m.get('chance') or {}).get(metric))})"


def format_table(results_by_model: Mapping[str, Mapping[str, dict]], details: bool = False) -> str:
  """Side-by-side text-task table: one row per task (findings -> impression at R@1/5/10), one column
  per model, every figure in % beside its chance level. details: MC4 per error kind rows too."""
  models = list(results_by_model)
  tasks = list(dict.fromkeys(t for r in results_by_model.values() for t in r))
  rows = [(t, m) for t, m in TABLE_ROWS if t in tasks]
  # Sets this table does not know (a caller's own) get their headline metric.
  rows += [(t, "accuracy" if "accuracy" in results_by_model[models[0]].get(t, {}) else "R@1")
           for t in tasks if t not in {t for t, _ in TABLE_ROWS}]
  if details:
    for t in [t for t, m in list(rows) if m == "accuracy"]:
      kinds = sorted({k for r in results_by_model.values() for k in (r.get(t, {}).get("by_error_kind") or {})})
      at = rows.index((t, "accuracy")) + 1
      rows[at:at] = [(t, f"vs {k}") for k in kinds]
  n = {t: next((r[t]["n"] for r in results_by_model.values() if t in r), "") for t in tasks}
  body = []
  for i, (t, metric) in enumerate(rows):
    first = i == 0 or rows[i - 1][0] != t
    label = t if first else (f"  {metric}" if metric.startswith("vs ") else "")
    body.append([label, str(n[t]) if first else ""] + [_cell(results_by_model[m].get(t), metric) for m in models])
  head = ["task", "n"] + models
  widths = [max(len(r[c]) for r in [head] + body) for c in range(len(head))]
  fmt = lambda r: "  ".join(r[0].ljust(widths[0]) if c == 0 else r[c].rjust(widths[c]) for c in range(len(r)))
  lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
  lines.append("in %, chance level in parentheses; R@k ties count against the query; MC4 (acc): the correct "
               "option strictly most similar" + ("; 'vs kind': correct above that error, pairwise" if details else ""))
  return "\n".join(lines)
