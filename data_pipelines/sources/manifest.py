"""A generic manifest, CSV or JSONL, in the schema itself (one row per study or per image):

    image        path relative to --root; several views as a JSON list (JSONL, or a CSV cell
                 starting with "[") or joined with "|" in CSV
    report       report text: tagged "[FINDINGS] … [IMPRESSION] …", "FINDINGS:"-style free text,
                 or plain text (taken as the impression); or give the two sections instead:
    findings, impression
    study_id     optional: rows sharing it form one multi-view study (default: the image path)
    patient_id   optional (default: the study id)
    split        optional: train / validation (val, valid) / test; empty -> patient-level hash split
    view         optional: per image, like `image`

--root holds manifest.jsonl or manifest.csv unless --manifest names the file. The paper's own
CLIP-stage CSV (an image path and a report per row) is a valid manifest.
"""
from __future__ import annotations

import json
import pathlib
import re

from data_pipelines import reports
from data_pipelines.sources import schema, tables

_HEADER = re.compile(r"(?m)^\s*(FINDINGS?|IMPRESSIONS?)\s*:")


def _list(value) -> list[str]:
  if isinstance(value, list):
    return [str(v).strip() for v in value]
  value = str(value or "").strip()
  if value.startswith("["):
    return [str(v).strip() for v in json.loads(value)]
  return [v.strip() for v in value.split("|")] if value else []


def _report(row: dict) -> reports.Report:
  if row.get("findings") or row.get("impression"):
    return reports.Report(findings=reports.clean(str(row.get("findings") or "")),
                          impression=reports.clean(str(row.get("impression") or "")))
  text = str(row.get("report") or "")
  return reports.parse_mimic(text) if _HEADER.search(text) else reports.from_tagged(text)


def _rows(path: pathlib.Path):
  """(where, row or None, error) for each row of a .jsonl or .csv manifest."""
  if path.suffix == ".jsonl":
    with open(path, "rb") as f:
      for n, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        try:
          row = json.loads(reports.decode_text(raw))
          if not isinstance(row, dict):
            raise ValueError("not a JSON object")
          yield f"{path.name} line {n}", row, None
        except ValueError as e:
          yield f"{path.name} line {n}", None, f"invalid JSON line: {e}"
  else:
    for n, row in enumerate(tables.rows(path, required=("image",)), start=2):
      yield f"{path.name} line {n}", row, None


def _find(root: pathlib.Path, manifest: str | None) -> pathlib.Path:
  if manifest:
    path = pathlib.Path(manifest)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
      raise schema.SourceError(f"manifest {path} does not exist")
    return path
  found = [root / n for n in ("manifest.jsonl", "manifest.csv") if (root / n).is_file()]
  if len(found) != 1:
    raise schema.SourceError(f"{root}: expected exactly one of manifest.jsonl / manifest.csv "
                             f"(found {len(found)}); or pass --manifest")
  return found[0]


def read(root: pathlib.Path, manifest: str | None = None) -> schema.Collection:
  path = _find(root, manifest)
  col = schema.Collection("manifest")
  studies: dict[str, schema.Record] = {}
  for where, row, error in _rows(path):
    if error:
      col.skip("study", where, error)
      continue
    try:
      images = _list(row.get("image"))
      views = _list(row.get("view")) or [""] * len(images)
    except ValueError as e:
      col.skip("study", where, f"invalid image or view list: {e}")
      continue
    if not images or len(views) != len(images):
      col.skip("study", where, "no image" if not images else "view list does not match image list")
      continue
    study = str(row.get("study_id") or "").strip() or images[0]
    split_text = str(row.get("split") or "").strip()
    split = schema.normalize_split(split_text) if split_text else ""
    if split is None:
      col.skip("study", where, f"unknown split {split_text!r}", study)
      continue
    views = [schema.normalize_view(v) for v in views]
    patient = str(row.get("patient_id") or "").strip() or study
    if study in studies:  # Another view of a study already seen: the first row's report stays.
      first = studies[study]
      if patient != first.patient_id or (split and split != first.split):
        col.skip("study", where, f"conflicts with an earlier row of study {study} (patient or split)", study)
        continue
      first.image += images
      first.view += views
      continue
    studies[study] = schema.Record.from_report(
        _report(row), image=images, study_id=study, patient_id=patient,
        split=split or schema.hash_split(patient), view=views)
  col.records = list(studies.values())
  return col
