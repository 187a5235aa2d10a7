"""One preparation shard: its studies' images decoded, resized and PNG-encoded, written as one
ArrayRecord file, plus a done-marker listing what was written and what was skipped, with why.

Runs in worker processes (`prepare.py` fans shards out); everything it needs travels in `Job`.
The shard file and its marker are each renamed into place only when complete, so an interrupted
run leaves either a finished shard or nothing that looks finished.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from data_pipelines import images, labels, tfds_dataset
from data_pipelines.sources import paths
from data_pipelines.sources.schema import Record, Skip


@dataclasses.dataclass
class Job:
  dataset: str
  root: str | None
  output: str
  split: str
  index: int
  count: int
  records: list[Record]
  fingerprint: str
  image_size: int
  fit: str

  @property
  def name(self) -> str:
    return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

  def marker(self) -> pathlib.Path:
    return pathlib.Path(self.output) / "work" / f"{self.name}.json"

  def shard(self) -> pathlib.Path:
    return tfds_dataset.tfds_dir(self.output) / tfds_dataset.shard_name(self.split, self.index, self.count)


_FEATURES = None  # Built once per worker process.


def _load(job: Job, record: Record, rel: str) -> np.ndarray:
  """One image as stored: uint8 (S, S)."""
  if job.dataset == "demo":
    from data_pipelines import demo  # Part of the package; only the demo set renders images.
    pixels = demo.render(record.source, size=job.image_size)
    if pixels.shape != (job.image_size, job.image_size):
      pixels = images.to_uint8(images.resize(pixels.astype(np.float32) / 255, job.image_size, job.fit))
    return pixels
  path = paths.resolve_under(job.root, rel)
  return images.to_uint8(images.resize(
      images.load(path, draft_size=job.image_size), job.image_size, job.fit))


def write_shard(job: Job) -> dict:
  """Writes the shard and its marker; returns the marker's content."""
  global _FEATURES
  if _FEATURES is None:
    _FEATURES = tfds_dataset.features()
  job.shard().parent.mkdir(parents=True, exist_ok=True)
  writer = tfds_dataset.ShardWriter(job.shard(), _FEATURES)
  metadata, skipped = [], []
  try:
    for rec in job.records:
      pngs, kept, views, reasons = [], [], [], []
      for rel, view in zip(rec.image, rec.view):
        try:
          pngs.append(images.encode_png(_load(job, rec, rel)))
        except (images.ImageError, paths.UnsafePath) as e:
          reasons.append(e.reason)
        except Exception as e:  # A file nothing anticipated: one skip, not a lost 10-hour run.
          reasons.append(f"unexpected {type(e).__name__}: {e}")
        else:
          kept.append(rel)
          views.append(view)
          continue
        skipped.append(Skip("image", rel, reasons[-1], rec.study_id))
      if not pngs:
        skipped.append(Skip("study", rec.study_id, f"no readable image ({reasons[0]})", rec.study_id))
        continue
      meta = {"study_id": rec.study_id, "patient_id": rec.patient_id, "dataset": job.dataset,
              "report": rec.report, "report_tagged": rec.tagged, "findings": rec.findings,
              "impression": rec.impression, "views": views, "image_paths": kept,
              "labels": labels.label_vector(rec.report).astype(int).tolist()}
      writer.write({**meta, "images": pngs, "labels": np.asarray(meta["labels"], np.int8)})
      metadata.append(meta)
  except BaseException:
    writer.abort()
    raise
  writer.close()
  done = {"fingerprint": job.fingerprint, "split": job.split, "num_records": writer.num_records,
          "num_bytes": writer.num_bytes, "num_images": sum(len(m["image_paths"]) for m in metadata),
          "skipped": [dataclasses.asdict(s) for s in skipped], "records": metadata}
  marker = job.marker()
  marker.parent.mkdir(parents=True, exist_ok=True)
  tmp = marker.with_name(f".{marker.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(done, ensure_ascii=False))
  os.replace(tmp, marker)
  return done


def read_marker(job: Job) -> dict | None:
  """The marker of a finished shard with this exact content, else None (redo it)."""
  try:
    done = json.loads(job.marker().read_text())
  except (OSError, ValueError):
    return None
  if done.get("fingerprint") != job.fingerprint or not job.shard().is_file():
    return None
  return done
