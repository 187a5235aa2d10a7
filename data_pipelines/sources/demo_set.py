"""The embedded demo set (`--dataset=demo`, no --root): the real IU reports from the asset cache, each
paired with a radiograph rendered from its findings (`data_pipelines.demo`). Images are rendered by
the preparation workers, so each record carries its `DemoStudy` and a nominal image path.
"""
from __future__ import annotations

from data_pipelines.sources import schema


def read() -> schema.Collection:
  from data_pipelines import demo  # Deferred: reads the asset cache.
  col = schema.Collection("demo")
  for study in demo.demo_studies():
    col.records.append(schema.Record.from_report(
        study.report, image=[f"rendered/{study.study_id}.png"], study_id=study.study_id,
        patient_id=study.patient_id, split=study.split, view=["PA"], source=study))
  return col
