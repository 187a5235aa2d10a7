"""PadChest. Layout under --root (BIMCV's):

    PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]
        one row per image: ImageID, ImageDir, StudyID, PatientID, Projection, Report, ...
    0/20536686640136348236148679891455886468_k6ga29.png ...   16-bit PNGs in folder ImageDir
        (or all directly under the root)

Reports are Spanish and kept as written. No official split: patient-level hash split (80/10/10).
"""
from __future__ import annotations

import pathlib

from data_pipelines import reports
from data_pipelines.sources import schema, tables


def read(root: pathlib.Path) -> schema.Collection:
  col = schema.Collection("padchest")
  studies: dict[str, schema.Record] = {}
  table = tables.find(root, "PADCHEST_chest_x_ray_images_labels_*.csv")
  for row in tables.rows(table, required=("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report")):
    image, study, patient = row["ImageID"].strip(), row["StudyID"].strip(), row["PatientID"].strip()
    if not (image and study and patient):
      col.skip("image", image or study or table.name, "row without ImageID, StudyID or PatientID", study)
      continue
    folder = row["ImageDir"].strip()
    rel = f"{folder}/{image}" if folder and not (root / image).is_file() else image
    if study not in studies:
      studies[study] = schema.Record.from_report(
          reports.parse_padchest(row), image=[], study_id=study, patient_id=patient,
          split=schema.hash_split(patient), view=[])
    studies[study].image.append(rel)
    studies[study].view.append(schema.normalize_view(row["Projection"]) or "UNKNOWN")
  col.records = list(studies.values())
  return col
