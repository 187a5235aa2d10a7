"""CheXpert Plus. Layout under --root (Stanford AIMI's):

    df_chexpert_plus_240401.csv[.gz]   one row per image: path_to_image, frontal_lateral, ap_pa,
                                       deid_patient_id, split (train/valid), report, section_*
    PNG/train/patient00001/study1/view1_frontal.png   (or the tree directly under the root)

`path_to_image` names the original `.jpg`; the release ships PNGs at the same relative path, so both
suffixes are tried, under the root and under PNG/. The split is the official one.
"""
from __future__ import annotations

import pathlib

from data_pipelines import reports
from data_pipelines.sources import schema, tables

_IMAGE_DIRS = ("", "PNG")


def _locate(root: pathlib.Path, rel: str) -> str:
  """The first existing candidate for a CSV image path; the literal path if none exists (a missing
  file is then reported when it is opened)."""
  stem = rel.rsplit(".", 1)[0]
  for folder in _IMAGE_DIRS:
    for name in (rel, stem + ".png", stem + ".jpg"):
      candidate = f"{folder}/{name}" if folder else name
      if (root / candidate).is_file():
        return candidate
  return rel


def read(root: pathlib.Path) -> schema.Collection:
  col = schema.Collection("chexpert_plus", official_split=True)
  studies: dict[str, schema.Record] = {}
  table = tables.find(root, "df_chexpert_plus_*.csv")
  for line, row in enumerate(tables.rows(table, required=(
      "path_to_image", "frontal_lateral", "deid_patient_id", "split", "report")), start=2):
    rel = row["path_to_image"].strip()
    parts = rel.split("/")
    if len(parts) < 4:
      col.skip("image", rel or f"{table.name} line {line}", "path_to_image is not split/patient/study/file")
      continue
    study = "/".join(parts[-3:-1])  # patient00001/study1
    split = schema.normalize_split(row["split"])
    if split is None:
      col.skip("image", rel, f"unknown split {row['split']!r}", study)
      continue
    frontal = row["frontal_lateral"].strip().lower() == "frontal"
    view = schema.normalize_view(row.get("ap_pa", "")) if frontal else "LATERAL"
    if study not in studies:
      report = reports.parse_chexpert_plus(row)
      studies[study] = schema.Record.from_report(
          report, image=[], study_id=study, patient_id=row["deid_patient_id"] or parts[-3],
          split=split, view=[])
    rec = studies[study]
    rec.image.append(_locate(root, rel))
    rec.view.append(view or "FRONTAL")
  col.records = list(studies.values())
  return col
