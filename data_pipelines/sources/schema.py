"""The one manifest schema every dataset adapter produces, and the checks all of them go through.

A `Record` is one study: its images (paths relative to the dataset root; several for a multi-view
study), its report (cleaned plain text, the tagged `[FINDINGS] … [IMPRESSION] …` form, and the two
sections), ids and split. Adapters only translate a layout into records; `finalize` applies the
policies every dataset shares, so they cannot drift apart:

- paths that are absolute or climb out of the root (`..`) are rejected (symlinks that leave the
  root are caught when the file is opened, see `paths.resolve_under`);
- with the frontal filter on, lateral and other non-frontal images are dropped, and a study left
  without an image is *filtered* (a policy exclusion, reported but not counted as bad input);
- an empty report is a *skip* (bad input, counted against the tolerated skip fraction);
- no patient may appear in two splits: that is an error naming the patients, unless the split is
  the dataset's official one, in which case it is kept and reported.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from data_pipelines import reports
from data_pipelines.sources import paths

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "validation", "validate": "validation",
                  "validation": "validation", "val": "validation", "dev": "validation", "test": "test"}
# Positions where a frontal radiograph is taken; the first word decides ("AP AXIAL", "PA LLD", …).
_FRONTAL = {"PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR"}


class SourceError(ValueError):
  """The dataset as a whole cannot be read as given (missing file or column, leaked patients)."""


@dataclasses.dataclass
class Record:
  image: list[str]          # paths relative to the root, frontal views first
  report: str               # cleaned plain text: findings then impression
  findings: str
  impression: str
  tagged: str               # "[FINDINGS] … [IMPRESSION] …"
  study_id: str
  patient_id: str
  split: str                # one of SPLITS
  view: list[str]           # per image, upper case ("PA", "AP", "LATERAL"); "" when unknown
  source: Any = None        # adapter-specific payload the loader needs (the demo's render spec)

  @classmethod
  def from_report(cls, report: reports.Report, **fields) -> "Record":
    return cls(report=report.text(), findings=report.findings, impression=report.impression,
               tagged=report.tagged(), **fields)


@dataclasses.dataclass(frozen=True)
class Skip:
  """One input left out, with why. kind: "study" or "image" (the units skip fractions count)."""
  kind: str
  input: str
  reason: str
  study_id: str = ""


@dataclasses.dataclass
class Collection:
  """What an adapter read: records, and everything it could not use, with reasons."""
  dataset: str
  records: list[Record] = dataclasses.field(default_factory=list)
  skipped: list[Skip] = dataclasses.field(default_factory=list)    # bad input; counted
  filtered: list[Skip] = dataclasses.field(default_factory=list)   # policy exclusions; reported
  notes: list[str] = dataclasses.field(default_factory=list)
  official_split: bool = False
  patient_overlap: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, kind: str, input_: str, reason: str, study_id: str = "") -> None:
    self.skipped.append(Skip(kind, input_, reason, study_id))


def normalize_split(value: str) -> str | None:
  """"validate", "val", "dev" -> "validation", etc.; None for an unknown name."""
  return _SPLIT_ALIASES.get(value.strip().lower())


def hash_split(key: str, percent: tuple[int, int, int] = (80, 10, 10)) -> str:
  """Deterministic split for datasets without an official one; key it by patient, never by image.
  Same rule as `demo.split_of`, so IU X-ray prepared from files and the demo set split alike."""
  bucket = int.from_bytes(hashlib.sha256(f"split:{key}".encode("utf-8")).digest()[:8], "big") % 100
  if bucket < percent[0]:
    return "train"
  return "validation" if bucket < percent[0] + percent[1] else "test"


def normalize_view(view: str) -> str:
  return " ".join(view.replace("_", " ").upper().split())


def is_frontal(view: str) -> bool:
  words = normalize_view(view).split()
  return bool(words) and words[0] in _FRONTAL


def finalize(col: Collection, *, frontal_only: bool = True) -> Collection:
  """Applies the shared policies (module docstring) to an adapter's records, in place."""
  kept, unknown_views = [], 0
  for rec in col.records:
    images, views, unsafe = [], [], []
    for rel, view in zip(rec.image, rec.view):
      try:
        paths.check_relative(rel)
      except paths.UnsafePath as e:
        col.skip("image", rel, e.reason, rec.study_id)
        unsafe.append(e.reason)
        continue
      if frontal_only and view and not is_frontal(view):
        col.filtered.append(Skip("image", rel, f"not a frontal view ({view})", rec.study_id))
        continue
      unknown_views += not view
      images.append(rel)
      views.append(view)
    if not images:
      if rec.image and not unsafe:
        col.filtered.append(Skip("study", rec.study_id, "no frontal view", rec.study_id))
      else:
        col.skip("study", rec.study_id, f"no usable image ({unsafe[0]})" if unsafe else "no image listed",
                 rec.study_id)
      continue
    if not rec.report.strip():
      col.skip("study", rec.study_id, "empty report", rec.study_id)
      continue
    # Frontal views first: the first image is the one a reader of the record expects.
    order = sorted(range(len(images)), key=lambda i: not is_frontal(views[i]))
    rec.image, rec.view = [images[i] for i in order], [views[i] for i in order]
    kept.append(rec)
  col.records = kept
  if frontal_only and unknown_views:
    col.notes.append(f"{unknown_views} images have no view metadata; the frontal filter kept them")
  _check_patients(col)
  return col


def _check_patients(col: Collection) -> None:
  splits: dict[str, set[str]] = {}
  for rec in col.records:
    splits.setdefault(rec.patient_id, set()).add(rec.split)
  leaked = {p: sorted(s, key=SPLITS.index) for p, s in splits.items() if len(s) > 1}
  if not leaked:
    return
  listed = ", ".join(f"{p} ({'/'.join(s)})" for p, s in sorted(leaked.items())[:10])
  more = f" and {len(leaked) - 10} more" if len(leaked) > 10 else ""
  if not col.official_split:
    raise SourceError(f"{len(leaked)} patients appear in more than one split: {listed}{more}; "
                      "fix the split column, or leave it empty for a patient-level split")
  col.patient_overlap = leaked
  col.notes.append(f"the official split puts {len(leaked)} patients in more than one split "
                   f"(kept as published): {listed}{more}")
