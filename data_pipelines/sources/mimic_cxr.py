"""MIMIC-CXR-JPG 2.x. Layout under --root (PhysioNet's, unchanged):

    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train/validate/test)
    files/p10/p10000032/s50414267/02aa804e-....jpg
    files/p10/p10000032/s50414267.txt   the free-text report (where mimic-cxr-reports.zip unpacks)
    mimic_cxr_sectioned.csv[.gz]        optional: the MIMIC-CXR section parser's output
                                        (study, impression, findings, last_paragraph, comparison);
                                        used instead of the .txt files when present

The split is the official one: patients it places in two splits are kept and reported.
"""
from __future__ import annotations

import pathlib

from data_pipelines import reports
from data_pipelines.sources import schema, tables


def _folder(subject: str, study: str) -> str:
  return f"files/p{subject[:2]}/p{subject}/s{study}"


def _sectioned(root: pathlib.Path) -> dict[str, reports.Report] | None:
  path = tables.find(root, "mimic_cxr_sectioned.csv", required=False)
  if path is None:
    return None
  out = {}
  for row in tables.rows(path, required=("study", "impression", "findings")):
    impression, findings = row["impression"], row["findings"]
    if not (impression.strip() or findings.strip()):
      impression = row.get("last_paragraph", "")  # The section parser's own fallback column.
    out[row["study"].lstrip("s")] = reports.Report(findings=reports.clean(findings),
                                                   impression=reports.clean(impression))
  return out


def read(root: pathlib.Path) -> schema.Collection:
  col = schema.Collection("mimic_cxr", official_split=True)
  split_of = {}
  for row in tables.rows(tables.find(root, "mimic-cxr-2.0.0-split.csv"),
                         required=("dicom_id", "study_id", "subject_id", "split")):
    split_of[row["dicom_id"]] = row["split"]
  studies: dict[str, dict] = {}
  for row in tables.rows(tables.find(root, "mimic-cxr-2.0.0-metadata.csv"),
                         required=("dicom_id", "subject_id", "study_id", "ViewPosition")):
    dicom, subject, study = row["dicom_id"], row["subject_id"], row["study_id"]
    entry = studies.setdefault(study, {"subject": subject, "images": [], "views": [], "split": None})
    image = f"{_folder(subject, study)}/{dicom}.jpg"
    split = schema.normalize_split(split_of.get(dicom, ""))
    if split is None:
      col.skip("image", image, f"not in the split file (or unknown split {split_of.get(dicom)!r})", study)
      continue
    entry["split"] = entry["split"] or split
    entry["images"].append(image)
    # An empty ViewPosition is metadata saying "not a standard view", not missing metadata.
    entry["views"].append(schema.normalize_view(row["ViewPosition"]) or "UNKNOWN")
  sectioned = _sectioned(root)
  for study, entry in studies.items():
    if not entry["images"]:
      col.skip("study", study, "no image with a split", study)
      continue
    if sectioned is not None:
      report = sectioned.get(study)
      if report is None:
        col.skip("study", study, "no row in mimic_cxr_sectioned.csv", study)
        continue
    else:
      txt = root / f"{_folder(entry['subject'], study)}.txt"
      try:
        report = reports.parse_mimic(reports.decode_text(txt.read_bytes()))
      except FileNotFoundError:
        col.skip("study", str(txt.relative_to(root)), "missing report file", study)
        continue
    col.records.append(schema.Record.from_report(
        report, image=entry["images"], study_id=study, patient_id=entry["subject"],
        split=entry["split"], view=entry["views"]))
  return col
