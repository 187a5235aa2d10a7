"""The embedded demo set (`--dataset=demo`): the real IU reports from the asset cache (or from
--root, a folder holding ecgen-radiology/*.xml), each paired with a radiograph rendered from its
findings (`data_pipelines.demo`). Images are rendered by the preparation workers, so each record
carries its `DemoStudy` and a nominal image path.
"""
from __future__ import annotations

import pathlib

from data_pipelines.sources import schema


def read(root: pathlib.Path | None = None) -> schema.Collection:
  from data_pipelines import demo  # Deferred: reads the asset cache.
  col = schema.Collection("demo")
  left_out: list[tuple[str, str]] = []
  for study in demo.demo_studies(root, skipped=left_out):
    col.records.append(schema.Record.from_report(
        study.report, image=[f"rendered/{study.study_id}.png"], study_id=study.study_id,
        patient_id=study.patient_id, split=study.split, view=["PA"], source=study))
  # The demo keeps the reports that have text, by design: the others are reported, not counted.
  col.filtered += [schema.Skip("study", f"ecgen-radiology/{name}", reason) for name, reason in left_out]
  return col
