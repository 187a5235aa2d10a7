"""Zero-shot finding classification from prompt pairs, scored by AUROC (pure numpy).

For each finding, an image's score is its similarity to the positive prompt minus that to the
negative prompt ("{finding}" vs "no {finding}", written as whole reports); AUROC is computed over images whose
label is positive (1) or negative (0); uncertain (-1) images are left out.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Prompt pairs are written as whole reports, in the register and format of the reports the text
# tower was trained on: a normal report, and the same report with one finding stated. A raw LLM
# embedding of a short sentence like "No cardiomegaly." sits far from every report (and close to
# "Cardiomegaly."), so report-shaped pairs isolate the finding instead.
NORMAL = ("The heart size is normal. The mediastinal contours are within normal limits. The lungs are "
          "clear. There is no pleural effusion or pneumothorax.", "No acute cardiopulmonary abnormality.")
ABNORMAL = ("The heart is enlarged. There are bilateral airspace opacities and small bilateral pleural "
            "effusions.", "Cardiomegaly with bilateral effusions and airspace disease.")
_POSITIVE = {  # finding -> (findings section, impression) stating it; the rest stays normal
    "Enlarged Cardiomediastinum": ("The cardiomediastinal silhouette is enlarged. The lungs are clear. There is "
                                   "no pleural effusion or pneumothorax.", "Enlarged cardiomediastinal silhouette."),
    "Cardiomegaly": ("The heart is enlarged. The lungs are clear. There is no pleural effusion or pneumothorax.",
                     "Cardiomegaly."),
    "Lung Opacity": ("The heart size is normal. There is an airspace opacity in the lung. There is no pleural "
                     "effusion or pneumothorax.", "Airspace opacity."),
    "Lung Lesion": ("The heart size is normal. There is a pulmonary nodule. There is no pleural effusion or "
                    "pneumothorax.", "Pulmonary nodule."),
    "Edema": ("The heart size is normal. There is pulmonary edema. There is no pneumothorax.", "Pulmonary edema."),
    "Consolidation": ("The heart size is normal. There is focal consolidation. There is no pleural effusion or "
                      "pneumothorax.", "Consolidation."),
    "Pneumonia": ("The heart size is normal. There is consolidation consistent with pneumonia. There is no "
                  "pleural effusion.", "Pneumonia."),
    "Atelectasis": ("The heart size is normal. There is basilar atelectasis. There is no pleural effusion or "
                    "pneumothorax.", "Atelectasis."),
    "Pneumothorax": ("The heart size is normal. The lungs are clear. There is a pneumothorax.", "Pneumothorax."),
    "Pleural Effusion": ("The heart size is normal. There is a pleural effusion. There is no pneumothorax.",
                         "Pleural effusion."),
    "Pleural Other": ("The heart size is normal. The lungs are clear. There is pleural thickening.",
                      "Pleural thickening."),
    "Fracture": ("The heart size is normal. The lungs are clear. There is a rib fracture.", "Rib fracture."),
    "Support Devices": ("A pacemaker and a central venous catheter are in place. The heart size is normal. The "
                        "lungs are clear.", "Support devices in place."),
}


def _report(findings: str, impression: str) -> str:
  from data_pipelines.reports import Report
  return Report(findings=findings, impression=impression).tagged()


# finding -> (positive prompt, negative prompt), CheXpert observation names.
PROMPTS: dict[str, tuple[str, str]] = {
    "No Finding": (_report(*NORMAL), _report(*ABNORMAL)),
    **{name: (_report(*pos), _report(*NORMAL)) for name, pos in _POSITIVE.items()},
}


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

  image_emb (N, D); positive_emb, negative_emb (F, D) prompt embeddings in `findings` order;
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
