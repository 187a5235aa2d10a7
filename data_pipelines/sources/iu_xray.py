"""IU X-ray / Open-I. Layout under --root (as NLM distributes it):

    ecgen-radiology/1.xml ...            one report per file (NLMCXR_reports.tgz)
    NLMCXR_png/CXR1_1_IM-0001-3001.png   the images, named by each XML's parentImage id
                                         (or directly under the root)
    indiana_projections.csv              optional (Kaggle's copy: uid, filename, projection);
                                         without it views are unknown and all images are kept

IU has no patient ids and no official split: each report is its own patient, split by a hash of
its uid (80/10/10), the same rule the demo set uses.
"""
from __future__ import annotations

import pathlib
import re

from data_pipelines import reports
from data_pipelines.sources import schema, tables


def _projections(root: pathlib.Path) -> dict[str, str]:
  """parentImage id -> "FRONTAL"/"LATERAL", from Kaggle's table ("1_IM-0001-4001.dcm.png")."""
  path = tables.find(root, "indiana_projections.csv", required=False)
  if path is None:
    return {}
  out = {}
  for row in tables.rows(path, required=("uid", "filename", "projection")):
    image_id = "CXR" + row["filename"].split(".", 1)[0]
    out[image_id] = schema.normalize_view(row["projection"])
  return out


def _number(path: pathlib.Path) -> tuple[int, str]:
  digits = re.match(r"\d+", path.stem)
  return (int(digits.group()) if digits else -1, path.name)


def read(root: pathlib.Path) -> schema.Collection:
  xml_dir = root / "ecgen-radiology"
  if not xml_dir.is_dir():
    raise schema.SourceError(f"{root}: no ecgen-radiology/ folder of report XMLs")
  image_dir = "NLMCXR_png/" if (root / "NLMCXR_png").is_dir() else ""
  views = _projections(root)
  col = schema.Collection("iu_xray")
  for xml in sorted(xml_dir.glob("*.xml"), key=_number):
    try:
      report, info = reports.parse_iu_xml(xml.read_bytes())
    except ValueError as e:
      col.skip("study", f"ecgen-radiology/{xml.name}", str(e))
      continue
    uid = info["uid"]
    col.records.append(schema.Record.from_report(
        report, image=[f"{image_dir}{i}.png" for i in info["image_ids"]], study_id=uid,
        patient_id=uid, split=schema.hash_split(uid), view=[views.get(i, "") for i in info["image_ids"]]))
  if not views:
    col.notes.append("IU X-ray ships no view metadata (add indiana_projections.csv to filter views)")
  return col
