"""Zero-shot finding classification from prompt pairs, scored by AUROC (pure numpy).

For each finding, an image's score is its similarity to the positive prompts minus that to the
negative prompts ("{finding}" vs "no {finding}", written as whole reports); AUROC is computed over
images whose label is positive (1) or negative (0); uncertain (-1) images are left out.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Prompts are written as whole reports, in the register and format of the reports the text tower
# was trained on: normal reports, and the same reports with one finding stated. A raw LLM
# embedding of a short sentence like "No cardiomegaly." sits far from every report (and close to
# "Cardiomegaly."), so report-shaped pairs isolate the finding instead. Each side is an ensemble
# whose text features are averaged (CLIP's prompt ensembling).
# Two phrasings of a normal report, one sentence per topic.
_NORMAL = (
    {"heart": "The heart size is normal.", "mediastinum": "The mediastinal contours are within normal limits.",
     "lungs": "The lungs are clear.", "pleura": "There is no pleural effusion or pneumothorax.",
     "bones": "No acute bony abnormality.", "impression": "No acute cardiopulmonary abnormality."},
    {"heart": "Heart size is normal.", "mediastinum": "Mediastinal silhouette is unremarkable.",
     "lungs": "Lungs are clear without focal airspace disease.", "pleura": "No pleural effusion or pneumothorax.",
     "bones": "The osseous structures are intact.", "impression": "No active disease."},
)
# finding -> (topic the stated sentence replaces, [(sentence, impression), ...]); topic None: added.
_STATED = {
    "Enlarged Cardiomediastinum": ("mediastinum", [("The cardiomediastinal silhouette is enlarged.",
                                                    "Enlarged cardiomediastinal silhouette.")]),
    "Cardiomegaly": ("heart", [("The heart is enlarged.", "Cardiomegaly."),
                               ("There is mild cardiomegaly.", "Mild cardiomegaly.")]),
    "Lung Opacity": ("lungs", [("There is an airspace opacity in the right lower lobe.", "Right lower lobe opacity."),
                               ("There are patchy bibasilar opacities.", "Bibasilar airspace disease.")]),
    "Lung Lesion": ("lungs", [("There is a nodule in the right upper lobe.", "Right upper lobe pulmonary nodule."),
                              ("There is a left lung mass.", "Left lung mass, suspicious for neoplasm.")]),
    "Edema": ("lungs", [("There is pulmonary edema with vascular congestion.", "Pulmonary edema.")]),
    "Consolidation": ("lungs", [("There is focal consolidation in the left lower lobe.",
                                 "Left lower lobe consolidation.")]),
    "Pneumonia": ("lungs", [("There is right lower lobe consolidation consistent with pneumonia.",
                             "Right lower lobe pneumonia.")]),
    "Atelectasis": ("lungs", [("There is left basilar subsegmental atelectasis.", "Left basilar atelectasis."),
                              ("There is bibasilar atelectasis.", "Bibasilar atelectasis.")]),
    "Pneumothorax": ("pleura", [("There is a right pneumothorax. No pleural effusion.", "Right pneumothorax."),
                                ("There is a small left apical pneumothorax.", "Small left pneumothorax.")]),
    "Pleural Effusion": ("pleura", [("There is a small left pleural effusion. No pneumothorax.",
                                     "Small left pleural effusion."),
                                    ("There are bilateral pleural effusions.", "Bilateral pleural effusions.")]),
    "Pleural Other": ("pleura", [("There is right pleural thickening. No effusion.", "Pleural thickening.")]),
    "Fracture": ("bones", [("There is a healed right rib fracture.", "Old right rib fracture.")]),
    "Support Devices": (None, [("Median sternotomy wires are present.", "Postoperative changes of sternotomy."),
                               ("A left-sided pacemaker is in place with leads in the heart.", "Pacemaker in place.")]),
}
_TOPICS = ("heart", "mediastinum", "lungs", "pleura", "bones")


def _report(sentences: dict, impression: str, added: str = "") -> str:
  from data_pipelines.reports import Report
  findings = " ".join([added] * bool(added) + [sentences[t] for t in _TOPICS])
  return Report(findings=findings, impression=impression).tagged()


def _normal_reports() -> tuple[str, ...]:
  return tuple(_report(n, n["impression"]) for n in _NORMAL)


def _stating(name: str) -> tuple[str, ...]:
  """Each normal report with the finding stated in place of its topic's normal sentence."""
  topic, stated = _STATED[name]
  out = []
  for sentence, impression in stated:
    for normal in _NORMAL:
      if topic is None:
        out.append(_report(normal, impression, added=sentence))
      else:
        out.append(_report({**normal, topic: sentence}, impression))
  return tuple(out)


# finding -> (positive prompts, negative prompts), CheXpert observation names.
PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "No Finding": (_normal_reports(), tuple(p for name in ("Cardiomegaly", "Lung Opacity", "Pleural Effusion",
                                                          "Atelectasis") for p in _stating(name))),
    **{name: (_stating(name), _normal_reports()) for name in _STATED},
}


def prompt_texts() -> tuple[list[str], list[list[int]], list[list[int]]]:
  """Distinct prompt texts, and per finding (PROMPTS order) the indices of its positives/negatives."""
  texts: list[str] = []
  index = lambda t: texts.index(t) if t in texts else (texts.append(t) or len(texts) - 1)
  pos = [[index(t) for t in p] for p, _ in PROMPTS.values()]
  neg = [[index(t) for t in n] for _, n in PROMPTS.values()]
  return texts, pos, neg


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U with tied scores counted half). labels in {0, 1}."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  n_pos, n_neg = labels.sum(), (~labels).sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores))
  ranks[order] = np.arange(1, len(scores) + 1)
  # Average ranks over ties.
  _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  for s, c in zip(start[counts > 1], counts[counts > 1]):
    ranks[order[s:s + c]] = s + (c + 1) / 2
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def zeroshot_auroc(image_emb: np.ndarray, positive_emb: np.ndarray, negative_emb: np.ndarray,
                   labels: np.ndarray, findings: Sequence[str], similarity=None,
                   min_positives: int = 1) -> dict[str, dict[str, float]]:
  """Per finding: {"auroc", "positives", "negatives"} for findings with enough labelled images.

  image_emb (N, D); positive_emb, negative_emb (F, D) class embeddings in `findings` order;
  labels (N, F) in {1, 0, -1}; similarity: f(a, b) -> (Na, Nb) (default cosine).
  """
  from cxrclip_jax.eval.retrieval import cosine
  sim = similarity or cosine
  score = sim(image_emb, positive_emb) - sim(image_emb, negative_emb)  # (N, F)
  out = {}
  for f, name in enumerate(findings):
    known = labels[:, f] >= 0
    pos = int((labels[:, f] == 1).sum())
    neg = int((labels[:, f] == 0).sum())
    if pos >= min_positives and neg >= 1:
      out[name] = {"auroc": auroc(score[known, f], labels[known, f] == 1), "positives": pos, "negatives": neg}
  return out


def mean_auroc(per_finding: Mapping[str, dict], min_positives: int = 10) -> float:
  vals = [v["auroc"] for v in per_finding.values() if v["positives"] >= min_positives]
  return float(np.mean(vals)) if vals else float("nan")
