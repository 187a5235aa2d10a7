"""One preparation shard: its studies' images decoded, resized and PNG-encoded into one ArrayRecord
file, their metadata into a JSONL sidecar, and a small done-marker with counts and every skip.

Runs in worker processes (`prepare.py` fans shards out); everything it needs travels in `Job`.
Each file is renamed into place only when complete, the marker last, so an interrupted run leaves
either a finished shard or nothing that reads as finished.
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

  def sidecar(self) -> pathlib.Path:
    return pathlib.Path(self.output) / "work" / f"{self.name}.records.jsonl"

  def shard(self) -> pathlib.Path:
    return tfds_dataset.tfds_dir(self.output) / tfds_dataset.shard_name(self.split, self.index, self.count)


_FEATURES = None  # Built once per worker process.


def _load(job: Job, record: Record, rel: str) -> np.ndarray:
  """One image as stored: uint8 (S, S)."""
  if job.dataset == "demo":
    from data_pipelines import demo  # Only the demo set renders its images.
    return images.resize(demo.render(record.source, size=job.image_size), job.image_size, job.fit)
  path = paths.resolve_under(job.root, rel)
  return images.to_uint8(images.resize(images.load(path, draft_size=job.image_size), job.image_size, job.fit))


def _encode_images(job: Job, record: Record, skipped: list[Skip]) -> tuple[list[bytes], list[str], list[str]]:
  """(PNGs, their paths, their views) of the images that decode; the others go to `skipped`."""
  pngs, kept, views = [], [], []
  for rel, view in zip(record.image, record.view):
    try:
      pngs.append(images.encode_png(_load(job, record, rel)))
    except (images.ImageError, paths.UnsafePath) as e:
      skipped.append(Skip("image", rel, e.reason, record.study_id))
    except Exception as e:  # A file nothing anticipated: one skip, not a lost 10-hour run.
      skipped.append(Skip("image", rel, f"unexpected {type(e).__name__}: {e}", record.study_id))
    else:
      kept.append(rel)
      views.append(view)
  return pngs, kept, views


def _write_atomic(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def write_shard(job: Job) -> dict:
  """Writes the shard, its sidecar and its marker; returns the marker's content."""
  global _FEATURES
  if _FEATURES is None:
    _FEATURES = tfds_dataset.features()
  job.shard().parent.mkdir(parents=True, exist_ok=True)
  job.marker().parent.mkdir(parents=True, exist_ok=True)
  writer = tfds_dataset.ShardWriter(job.shard(), _FEATURES)
  lines, skipped, num_images = [], [], 0
  try:
    for rec in job.records:
      first_skip = len(skipped)
      pngs, kept, views = _encode_images(job, rec, skipped)
      if not pngs:
        skipped.append(Skip("study", rec.study_id, f"no readable image ({skipped[first_skip].reason})",
                            rec.study_id))
        continue
      meta = {"study_id": rec.study_id, "patient_id": rec.patient_id, "dataset": job.dataset,
              "report": rec.report, "report_tagged": rec.tagged, "findings": rec.findings,
              "impression": rec.impression, "views": views, "image_paths": kept}
      vector = labels.label_vector(rec.report)  # int8 (14,)
      writer.write({**meta, "images": pngs, "labels": vector})
      lines.append(json.dumps({**meta, "labels": vector.tolist()}, ensure_ascii=False) + "\n")
      num_images += len(pngs)
  except BaseException:
    writer.abort()
    raise
  writer.close()
  _write_atomic(job.sidecar(), "".join(lines))
  done = {"fingerprint": job.fingerprint, "split": job.split, "num_records": writer.num_records,
          "num_bytes": writer.num_bytes, "num_images": num_images,
          "skipped": [dataclasses.asdict(s) for s in skipped]}
  _write_atomic(job.marker(), json.dumps(done, ensure_ascii=False))
  return done


def read_marker(job: Job) -> dict | None:
  """The marker of a finished shard with this exact content, else None (redo it)."""
  try:
    done = json.loads(job.marker().read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  if done.get("fingerprint") != job.fingerprint or not (job.shard().is_file() and job.sidecar().is_file()):
    return None
  return done
