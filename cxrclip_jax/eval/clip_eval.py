"""Evaluates a dual tower on prepared splits: retrieval (exact and clinical) and zero-shot AUROC.

Features are computed batch by batch on the mesh, gathered to every host, put back in record
order (Grain shards records over processes) with padding rows dropped, then scored in numpy.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np
import tqdm

from cxrclip_jax import sharding
from cxrclip_jax.eval import retrieval, zeroshot
from cxrclip_jax.models.clip import text_inputs
from data_pipelines import labels as labels_lib

ZEROSHOT_MIN_POSITIVES = 10


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return a @ b.T


class ClipEvaluator:
  """`evaluate(params, split)` -> the metrics.json block for one split.

  datasets: split -> zero-arg callable returning a fresh single-pass eval iterator (padded
    batches with a `valid` mask), as `pipelines.clip_dataset(train=False)` gives.
  text_tables: split -> (N, D_text) cached LLM embeddings by record (text_mode="cached"), else None.
  prompts: the texts of `zeroshot.prompt_texts()` as model text input: {"text_emb": (P, D_text)}
    cached embeddings, or tokenized {"input_ids", "attention_mask", "embed_mask"} (P, L).
  """

  def __init__(self, model, mesh, datasets: Mapping[str, Callable], text_tables: Mapping[str, np.ndarray] | None,
               prompts: Mapping[str, np.ndarray], similarity_mode: str, rules=sharding.DEFAULT_RULES):
    self.model, self.mesh, self.rules = model, mesh, rules
    self.datasets, self.text_tables, self.prompts = datasets, text_tables, prompts
    self.similarity = retrieval.cosine if similarity_mode == "standard" else dot
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
    self._text = jax.jit(lambda p, t: model.apply({"params": p}, t, method=model.encode_text))

  def features(self, params, split: str, progress: bool = False):
    """Image and text features (N, E), text ids (N,), labels (N, 14), in record order."""
    table = None if self.text_tables is None else self.text_tables[split]
    parts = {k: [] for k in ("img", "txt", "record_index", "text_id", "labels", "valid")}
    iterator = self.datasets[split]()
    with sharding.activate(self.mesh, self.rules):
      for batch in tqdm.tqdm(iterator, desc=f"eval {split}", disable=not progress, unit="batch"):
        if table is not None:
          batch = dict(batch, text_emb=table[batch["record_index"]])
        arrays = sharding.global_batch({k: v for k, v in batch.items() if k in (
            "image", "text_emb", "input_ids", "attention_mask", "embed_mask", "record_index", "text_id",
            "labels", "valid")}, self.mesh)
        parts["img"].append(sharding.to_host(self._image(params, arrays["image"])))
        parts["txt"].append(sharding.to_host(self._text(params, text_inputs(arrays))))
        for k in ("record_index", "text_id", "labels", "valid"):
          parts[k].append(sharding.to_host(arrays[k]))
    if hasattr(iterator, "close"):
      iterator.close()  # stop Grain's workers now, not at garbage collection
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    keep = cat["valid"].astype(bool)
    order = np.argsort(cat["record_index"][keep], kind="stable")
    return {k: cat[k][keep][order] for k in ("img", "txt", "text_id", "labels")}

  def prompt_features(self, params) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) class embeddings (F, E): the mean of each ensemble's features
    (L2-normalized first under the standard similarity, as CLIP's prompt ensembling)."""
    with sharding.activate(self.mesh, self.rules):
      feats = sharding.to_host(self._text(params, {k: jax.numpy.asarray(v) for k, v in self.prompts.items()}))
    if self.similarity is retrieval.cosine:
      feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    _, pos, neg = zeroshot.prompt_texts()
    return (np.stack([feats[i].mean(0) for i in pos]), np.stack([feats[i].mean(0) for i in neg]))

  def evaluate(self, params, split: str, progress: bool = False) -> dict:
    f = self.features(params, split, progress)
    out = retrieval.retrieval_metrics(f["img"], f["txt"], f["text_id"], f["labels"], self.similarity,
                                      name=f"evaluation of split {split!r}")
    pos, neg = self.prompt_features(params)
    retrieval.check_finite(f"zero-shot prompts of split {split!r}", positive_prompts=pos, negative_prompts=neg)
    names = list(zeroshot.PROMPTS)
    columns = [labels_lib.FINDINGS.index(n) for n in names]
    detail = zeroshot.zeroshot_auroc(f["img"], pos, neg, f["labels"][:, columns], names, self.similarity)
    out.update(
        n=int(len(f["img"])), unique_texts=out["n"]["unique_texts"],
        chance=out["i2t"]["chance"],
        zeroshot_auroc={k: v["auroc"] for k, v in detail.items()},
        zeroshot_positives={k: v["positives"] for k, v in detail.items()},
        zeroshot_mean_auroc=zeroshot.mean_auroc(detail, ZEROSHOT_MIN_POSITIVES))
    return out


def format_metrics(split: str, m: Mapping) -> str:
  lines = [retrieval.format_table(m, title=f"== {split}: {m['n']} images, {m['unique_texts']} distinct reports ==")]
  lines.append(f"zero-shot AUROC (chance 0.50; * = at least {ZEROSHOT_MIN_POSITIVES} positives, in the mean)")
  for name, value in sorted(m["zeroshot_auroc"].items(), key=lambda kv: -m["zeroshot_positives"][kv[0]]):
    star = "*" if m["zeroshot_positives"][name] >= ZEROSHOT_MIN_POSITIVES else " "
    lines.append(f"  {star} {name:28s} {value:6.3f}   ({m['zeroshot_positives'][name]} positives)")
  lines.append(f"  mean over starred findings: {m['zeroshot_mean_auroc']:.3f}")
  return "\n".join(lines)
