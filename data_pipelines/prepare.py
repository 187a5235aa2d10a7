"""Prepares a dataset for training: images decoded, resized and stored as PNG bytes, reports cleaned,
in TFDS ArrayRecord shards per split that Grain reads without TensorFlow (layout: tfds_dataset.py).

    python -m data_pipelines.prepare --dataset=mimic_cxr --root=/data/mimic-cxr-jpg \
        --output=/data/prepared/mimic_cxr --image_size=512 --workers=32
    python -m data_pipelines.prepare --dataset=demo --output=/tmp/demo --image_size=128

Each split is cut into shards of --shard_size studies; worker processes write them and mark each
done with a fingerprint of its inputs, so a rerun redoes only unfinished or changed shards. Bad
inputs (corrupt, truncated or missing images, empty reports, unsafe paths) are skipped and listed in
summary.json with their reasons; more than --max_skip_fraction of studies or of images skipped
fails the command, naming the first offenders, and leaves the output unreadable as a dataset.

Several machines: run with --num_tasks=N --task_index=i on each (shard k goes to task k mod N),
writing to the same --output on shared storage (or copy their tfds/ and work/ folders together);
then run once more without --num_tasks: nothing is redone, the skips are checked and the metadata
written.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import sys
import time
import types

from absl import app, flags

from data_pipelines import images, sources, tfds_dataset
from data_pipelines.prepare_worker import Job, read_marker, write_shard

FORMAT_VERSION = 1  # Bump when the stored form changes, so old shards are redone.


class PrepareError(RuntimeError):
  """Preparation cannot produce a dataset; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class Options:
  dataset: str
  output: str
  root: str | None = None
  manifest: str | None = None
  image_size: int = 512
  fit: str = "pad"
  workers: int = 1
  max_skip_fraction: float = 0.01
  shard_size: int = 512
  frontal_only: bool = True
  task_index: int = 0
  num_tasks: int = 1


def _fingerprint(opts: Options, records) -> str:
  payload = {"version": FORMAT_VERSION, "dataset": opts.dataset, "size": opts.image_size,
             "fit": opts.fit, "records": [dataclasses.asdict(r) for r in records]}
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def plan(opts: Options, records) -> list[Job]:
  """Shards per split, in split order then record order (the order records are read back)."""
  by_split = collections.defaultdict(list)
  for rec in records:
    by_split[rec.split].append(rec)
  jobs = []
  for split in sources.SPLITS:
    recs = by_split.get(split, [])
    count = -(-len(recs) // opts.shard_size)
    for k in range(count):
      chunk = recs[k * opts.shard_size:(k + 1) * opts.shard_size]
      jobs.append(Job(opts.dataset, opts.root, opts.output, split, k, count, chunk,
                      _fingerprint(opts, chunk), opts.image_size, opts.fit))
  return jobs


def _run_jobs(jobs: list[Job], workers: int) -> None:
  start, done, written = time.time(), 0, 0
  every = max(1, len(jobs) // 20)

  def report(result: dict) -> None:
    nonlocal done, written
    done, written = done + 1, written + result["num_records"]
    if done % every == 0 or done == len(jobs):
      print(f"prepare: {done}/{len(jobs)} shards, {written} studies written, "
            f"{time.time() - start:.0f} s", flush=True)

  if workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      report(write_shard(job))
    return
  # spawn: workers start clean (no inherited threads or locks), at ~1 s each.
  with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
    for result in pool.imap_unordered(write_shard, jobs):
      report(result)


def _fractions(col, markers: list[dict]) -> tuple[list[dict], dict[str, tuple[int, int]]]:
  """All skips, and (skipped, seen) for studies and for images."""
  skipped = [dataclasses.asdict(s) for s in col.skipped] + [s for m in markers for s in m["skipped"]]
  counts = collections.Counter(s["kind"] for s in skipped)
  adapter = collections.Counter(s.kind for s in col.skipped)
  seen = {"study": len(col.records) + adapter["study"],
          "image": sum(len(r.image) for r in col.records) + adapter["image"]}
  return skipped, {k: (counts[k], seen[k]) for k in ("study", "image")}


def _by_reason(reasons) -> dict[str, int]:
  """Counts per kind of reason: the text before any detail ("corrupt or truncated PNG: …")."""
  return dict(collections.Counter(re.split(r":| \(", r, maxsplit=1)[0] for r in reasons).most_common())


def _summary(opts: Options, col, markers, skipped, tallies, status: str) -> dict:
  records, images_ = collections.Counter(), collections.Counter()
  for m in markers:
    records[m["split"]] += m["num_records"]
    images_[m["split"]] += m["num_images"]
  return {
      "status": status, "dataset": opts.dataset, "root": opts.root, "image_size": opts.image_size,
      "fit": opts.fit, "frontal_only": opts.frontal_only, "format_version": FORMAT_VERSION,
      "records": {s: records[s] for s in sources.SPLITS if records[s]},
      "images": {s: images_[s] for s in sources.SPLITS if images_[s]},
      "skip_fraction": {k: (n / seen if seen else 0.0) for k, (n, seen) in tallies.items()},
      "max_skip_fraction": opts.max_skip_fraction,
      "skipped_by_reason": _by_reason(s["reason"] for s in skipped),
      "filtered_by_reason": _by_reason(s.reason for s in col.filtered),
      "notes": col.notes, "official_split": col.official_split, "patient_overlap": col.patient_overlap,
      "tfds_dir": os.fspath(tfds_dataset.tfds_dir(".")), "skipped": skipped,
      "filtered": [dataclasses.asdict(s) for s in col.filtered],
  }


def _write_json(path: pathlib.Path, obj: dict) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
  os.replace(tmp, path)


def _concatenate(parts: list[pathlib.Path], path: pathlib.Path) -> None:
  """The shards' metadata sidecars, in shard order, as one file (bytes copied, not re-parsed)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as out:
    for part in parts:
      with open(part, "rb") as f:
        shutil.copyfileobj(f, out)
  os.replace(tmp, path)


def _remove_stale(output: pathlib.Path, jobs: list[Job]) -> None:
  """Files of an earlier plan (other sizes or shard counts) and temporaries of killed workers."""
  keep = {p.name for j in jobs for p in (j.shard(), j.marker(), j.sidecar())}
  for folder, pattern in ((tfds_dataset.tfds_dir(output), f"{tfds_dataset.NAME}-*"), (output / "work", "*.json*")):
    for path in [*folder.glob(pattern), *folder.glob(f".{pattern}.tmp*")]:
      if path.name not in keep:
        path.unlink()


def run(opts: Options) -> dict:
  """Prepares (or resumes) the dataset; returns the summary. Raises PrepareError or SourceError."""
  if opts.fit not in images.FITS:
    raise PrepareError(f"--fit must be one of {', '.join(images.FITS)}")
  if not 0 <= opts.task_index < opts.num_tasks:
    raise PrepareError(f"--task_index={opts.task_index} is not in [0, --num_tasks={opts.num_tasks})")
  output = pathlib.Path(opts.output)
  col = sources.load(opts.dataset, opts.root, frontal_only=opts.frontal_only,
                     **({"manifest": opts.manifest} if opts.manifest else {}))
  if not col.records:
    raise PrepareError(f"no usable study in {opts.root or opts.dataset} "
                       f"({len(col.skipped)} skipped, {len(col.filtered)} filtered)")
  jobs = plan(opts, col.records)
  markers = {j.name: read_marker(j) for j in jobs}
  pending = [j for j in jobs if markers[j.name] is None]
  mine = [j for k, j in enumerate(jobs) if k % opts.num_tasks == opts.task_index and markers[j.name] is None]
  print(f"prepare: {opts.dataset}: {len(col.records)} studies in {len(jobs)} shards, "
        f"{len(jobs) - len(pending)} already done, {len(mine)} to write", flush=True)
  if pending:
    # Until every shard is done the folder must not read as a finished dataset.
    (tfds_dataset.tfds_dir(output) / "dataset_info.json").unlink(missing_ok=True)
  _run_jobs(mine, opts.workers)
  if opts.num_tasks > 1:
    print(f"prepare: task {opts.task_index}/{opts.num_tasks} done; run once more without "
          "--num_tasks to check skips and write the metadata", flush=True)
    return {}
  summary = _finish(opts, col, jobs)
  if opts.dataset == "demo":
    from data_pipelines import demo
    demo.write_contact_sheet([r.source for r in col.records], output / "demo_contact_sheet.png")
  return summary


def _finish(opts: Options, col, jobs: list[Job]) -> dict:
  """Checks the skips against the limit, then writes the metadata that makes the folder a dataset."""
  output = pathlib.Path(opts.output)
  markers = [read_marker(j) for j in jobs]
  missing = [j.name for j, m in zip(jobs, markers) if m is None]
  if missing:
    raise PrepareError(f"{len(missing)} shards are not finished (first: {missing[0]}); run again")
  skipped, tallies = _fractions(col, markers)
  over = {k: (n, seen) for k, (n, seen) in tallies.items() if seen and n / seen > opts.max_skip_fraction}
  if over:
    _write_json(output / "summary.json", _summary(opts, col, markers, skipped, tallies, "failed"))
    worst = "; ".join(f"{s['input']}: {s['reason']}" for s in skipped[:5])
    nouns = {"study": "studies", "image": "images"}
    fractions = " and ".join(f"{n} of {seen} {nouns[k]} ({n / seen:.1%})" for k, (n, seen) in over.items())
    raise PrepareError(f"{fractions} skipped, above --max_skip_fraction={opts.max_skip_fraction}; "
                       f"first: {worst} (all in {output / 'summary.json'})")
  by_split = collections.defaultdict(list)
  for job, marker in zip(jobs, markers):
    by_split[job.split].append((job, marker))
  for split, done in by_split.items():
    _concatenate([job.sidecar() for job, _ in done], output / "metadata" / f"{split}.jsonl")
  tfds_dataset.write_metadata(
      output, {s: [m["num_records"] for _, m in done] for s, done in by_split.items()},
      {s: sum(m["num_bytes"] for _, m in done) for s, done in by_split.items()},
      description=f"{opts.dataset} prepared at {opts.image_size} px ({opts.fit}) by data_pipelines.prepare")
  _remove_stale(output, jobs)
  summary = _summary(opts, col, markers, skipped, tallies, "ok")
  _write_json(output / "summary.json", summary)
  return summary


def _define_flags():
  """Defined only when run as a program: the trainer and tests import this module too."""
  return types.SimpleNamespace(
      dataset=flags.DEFINE_enum("dataset", None, list(sources.ADAPTERS), "Which dataset layout --root holds."),
      root=flags.DEFINE_string("root", None, "Dataset root (not needed for --dataset=demo)."),
      output=flags.DEFINE_string("output", None, "Output directory (created; reruns resume)."),
      manifest=flags.DEFINE_string("manifest", None, "For --dataset=manifest: the CSV/JSONL file."),
      image_size=flags.DEFINE_integer("image_size", 512, "Stored image side in pixels."),
      fit=flags.DEFINE_enum("fit", "pad", list(images.FITS), "Square by padding or by center-cropping."),
      workers=flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes."),
      max_skip=flags.DEFINE_float("max_skip_fraction", 0.01, "Fail above this fraction of skipped studies or images."),
      shard_size=flags.DEFINE_integer("shard_size", 512, "Studies per shard (the unit of resumption)."),
      frontal_only=flags.DEFINE_bool("frontal_only", True, "Keep frontal (PA/AP) views only."),
      task_index=flags.DEFINE_integer("task_index", 0, "This machine's index, with --num_tasks."),
      num_tasks=flags.DEFINE_integer("num_tasks", 1, "Machines sharing the work (shard k -> task k mod N)."))


def main(argv, f) -> int:
  del argv
  if f.dataset.value is None or f.output.value is None:
    print("error: --dataset and --output are required", file=sys.stderr)
    return 2
  opts = Options(f.dataset.value, f.output.value, f.root.value, f.manifest.value, f.image_size.value,
                 f.fit.value, f.workers.value, f.max_skip.value, f.shard_size.value, f.frontal_only.value,
                 f.task_index.value, f.num_tasks.value)
  try:
    summary = run(opts)
  except (PrepareError, sources.SourceError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if summary:
    n = sum(summary["skipped_by_reason"].values())
    print(f"prepare: done: {summary['records']} records, {n} skipped "
          f"(see {pathlib.Path(opts.output) / 'summary.json'})", flush=True)
  return 0


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
