"""Input at the paper's scale: synthetic image-report sets of 16k, 160k and 1.6M studies, run through
the project's own prepare step (`data_pipelines.prepare`, manifest source, ArrayRecord writer) and
read back through the Grain CLIP pipeline (`pipelines.clip_dataset`).

    python benchmarks/data_scale.py                                  # 16k, 160k, 1.6M
    python benchmarks/data_scale.py --sizes=16000,160000 --workdir=/tmp/scale --keep

Per size it prints: prepare throughput (studies/s, manifest read to metadata written, and its phases)
and peak RSS; Grain start-up (pipeline construction to first batch) and the reading process's RSS;
the saved iterator state's size (JSON bytes, the form Grain checkpoints) and the time to restore it
mid-epoch, twice: a state saved after a few batches, and one moved to the middle of the first epoch;
both must give the same next batch as the uninterrupted iterator; and studies/s with 1 and 2
processes, each reading its own shard (`process_index` / `process_count`), checked to be disjoint.

The data: 32x32 grayscale PNGs (by default a pool of --image_pool distinct files that manifest rows
cycle through, so 1.6M studies do not need 1.6M files; --image_pool=0 writes one per study) and
MIMIC-style reports ("FINDINGS: ... IMPRESSION: ...", 60-120 words) drawn from a small template
vocabulary; every study is its own patient, all in the train split. Reading, restore and the
throughput probes run in fresh spawned processes, so each RSS is that of a reader alone. Nothing
here tokenizes (tokenizer=None): the reading cost is parse, PNG decode, report augmentation, batch.

Whatever grows faster than the data (prepare s/study, reader RSS beyond the index) or at all
(start-up, state bytes, restore time) is flagged in the scaling lines after the table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import random
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

STORED = 32  # px, as prepared and as read.

# ---- synthetic reports ------------------------------------------------------------------------------

_SIDE = ("left", "right")
_FINDINGS = (
    lambda r: f"PA and lateral views of the chest were obtained {r.choice(('in the upright position', 'with the patient standing', 'at the bedside'))}.",
    lambda r: f"The lungs are {r.choice(('clear', 'well expanded and clear', 'hyperinflated but otherwise clear', 'low in volume'))}.",
    lambda r: "There is no focal consolidation, pleural effusion, or pneumothorax.",
    lambda r: f"{r.choice(('A small', 'A moderate', 'A trace'))} {r.choice(_SIDE)} pleural effusion is present with adjacent atelectasis.",
    lambda r: f"The cardiomediastinal silhouette is {r.choice(('normal', 'within normal limits', 'stable in appearance', 'mildly enlarged'))}.",
    lambda r: f"Heart size is {r.choice(('normal', 'mildly enlarged', 'at the upper limits of normal', 'moderately enlarged'))}.",
    lambda r: f"{r.choice(('Mild', 'Minimal', 'Patchy'))} {r.choice(('left basilar', 'right basilar', 'bibasilar'))} opacities likely reflect atelectasis.",
    lambda r: f"There is {r.choice(('no', 'mild', 'moderate'))} pulmonary vascular congestion.",
    lambda r: f"The hilar contours are {r.choice(('normal', 'unremarkable', 'mildly prominent'))}.",
    lambda r: "No acute osseous abnormality is identified.",
    lambda r: f"Degenerative changes are noted in the {r.choice(('thoracic spine', 'shoulders', 'acromioclavicular joints'))}.",
    lambda r: f"A {r.choice(_SIDE)} internal jugular central venous catheter terminates in the {r.choice(('mid SVC', 'cavoatrial junction', 'right atrium'))}.",
    lambda r: f"An endotracheal tube terminates {r.randint(2, 7)} cm above the carina.",
    lambda r: f"A {r.randint(3, 12)} mm nodule is seen in the {r.choice(('right upper', 'left lower', 'right middle', 'left upper'))} lobe.",
    lambda r: f"Surgical clips are seen in the {r.choice(('right upper quadrant', 'left axilla', 'mediastinum'))}.",
    lambda r: "The visualized upper abdomen is unremarkable.",
    lambda r: f"The aorta is {r.choice(('tortuous', 'calcified', 'normal in caliber'))}.",
    lambda r: f"Compared with the prior radiograph from {r.randint(2009, 2019)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}, "
              f"there is {r.choice(('no significant interval change', 'slight improvement', 'mild worsening'))}.",
)
_IMPRESSIONS = (
    lambda r: "No acute cardiopulmonary process.",
    lambda r: f"{r.choice(('Small', 'Moderate'))} {r.choice(_SIDE)} pleural effusion with adjacent atelectasis.",
    lambda r: f"Stable {r.choice(('mild', 'moderate'))} cardiomegaly without pulmonary edema.",
    lambda r: "Findings may represent early pneumonia in the appropriate clinical setting.",
    lambda r: "Lines and tubes in appropriate position.",
    lambda r: f"Follow-up chest CT is recommended in {r.choice((3, 6, 12))} months for the pulmonary nodule.",
    lambda r: f"{r.choice(('Improving', 'Unchanged', 'Worsening'))} {r.choice(('bibasilar', 'left basilar', 'right basilar'))} atelectasis.",
)


def synth_report(r: random.Random) -> tuple[str, int]:
  """A MIMIC-style report ("INDICATION: ... FINDINGS: ... IMPRESSION: ...") and its words in the
  two sections, 60-120."""
  target = r.randint(60, 120)
  findings, impression, words = [], [], 0
  for f in r.sample(_IMPRESSIONS, r.randint(1, 3)):
    impression.append(f(r))
    words += len(impression[-1].split())
  pool = list(_FINDINGS)
  r.shuffle(pool)
  for f in pool * 3:  # Templates repeat (with new slot values) only for the longest reports.
    s = f(r)
    if words + len(s.split()) > 120:
      continue
    findings.append(s)
    words += len(s.split())
    if words >= target:
      break
  text = (f"INDICATION: ___ year old {r.choice(('man', 'woman'))} with "
          f"{r.choice(('cough', 'fever', 'shortness of breath', 'chest pain', 'hypoxia'))}.\n\n"
          f"FINDINGS: {' '.join(findings)}\n\nIMPRESSION: {' '.join(impression)}\n")
  return text, words


def synthesize(root: pathlib.Path, n: int, pool: int, seed: int = 0) -> dict:
  """n studies under root: img/*.png and manifest.jsonl. Returns word-count statistics."""
  from PIL import Image
  (root / "img").mkdir(parents=True, exist_ok=True)
  files = n if pool <= 0 else min(pool, n)
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:STORED, 0:STORED] / STORED
  lungs = ((x - 0.3) ** 2 / 0.02 + (y - 0.45) ** 2 / 0.08 < 1) | ((x - 0.7) ** 2 / 0.02 + (y - 0.45) ** 2 / 0.08 < 1)
  for i in range(files):
    pixels = np.clip(0.75 - 0.4 * lungs + 0.06 * rng.standard_normal((STORED, STORED)), 0, 1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "img" / f"{i}.png", compress_level=1)
  r = random.Random(seed)
  counts = np.zeros(n, np.int32)
  with open(root / "manifest.jsonl", "w", encoding="utf-8") as f:
    lines = []
    for i in range(n):
      text, counts[i] = synth_report(r)
      lines.append(json.dumps({"image": f"img/{i % files}.png", "view": "PA", "report": text,
                               "study_id": f"s{i:08d}", "patient_id": f"p{i:08d}", "split": "train"}) + "\n")
      if len(lines) == 10000:
        f.writelines(lines)
        lines = []
    f.writelines(lines)
  return {"files": files, "words_min": int(counts.min()), "words_mean": float(counts.mean()),
          "words_max": int(counts.max()), "manifest_bytes": (root / "manifest.jsonl").stat().st_size}


# ---- children (spawned: clean RSS, no inherited threads) --------------------------------------------

def _rss_mib() -> float:
  import psutil
  return psutil.Process().memory_info().rss / 2**20


def _peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def _open_fds() -> int:
  return len(os.listdir("/proc/self/fd"))


def _child(fn, queue, *args) -> None:
  try:
    queue.put(("ok", fn(*args)))
  except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises.
    import traceback
    queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _run_children(fn, arg_lists, barrier_parties: int = 0) -> list:
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  barrier = ctx.Barrier(barrier_parties) if barrier_parties else None
  procs = [ctx.Process(target=_child, args=(fn, queue, *args, *((barrier,) if barrier else ())))
           for args in arg_lists]
  for p in procs:
    p.start()
  results = [queue.get() for _ in procs]
  for p in procs:
    p.join()
  errors = [r for kind, r in results if kind == "error"]
  if errors:
    raise RuntimeError("child failed:\n" + errors[0])
  return [r for _, r in results]


def _prepare_child(src: str, out: str, workers: int, shard_size: int) -> dict:
  """prepare.run with its phases timed (module globals wrapped; nothing in prepare.py changes)."""
  from data_pipelines import prepare
  phases = {}

  def timed(name, fn):
    def wrapper(*a, **k):
      start = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
    return wrapper

  prepare.sources.load = timed("load", prepare.sources.load)
  for name in ("plan", "read_marker", "_run_jobs", "_finish"):
    setattr(prepare, name, timed(name.strip("_"), getattr(prepare, name)))
  start = time.perf_counter()
  summary = prepare.run(prepare.Options("manifest", out, src, image_size=STORED, workers=workers,
                                        shard_size=shard_size))
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "records": sum(summary["records"].values()),
          "skipped": sum(summary["skipped_by_reason"].values()), "phases": phases,
          "peak_mib": _peak_mib()}


def _imports() -> None:
  """Imports out of the timed start-up: a constant, and not what scales."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain workers (worker_count > 0) read absl flags.
  import grain  # noqa: F401
  import tensorflow_datasets  # noqa: F401
  from tensorflow_datasets.proto import tf_example_pb2  # noqa: F401
  from data_pipelines import pipelines  # noqa: F401


def _dataset(data_dir: str, batch_size: int, worker_count: int, process_index: int = 0, process_count: int = 1):
  from data_pipelines import pipelines
  return pipelines.clip_dataset(data_dir, "train", batch_size=batch_size, image_size=STORED, tokenizer=None,
                                max_length=8, seed=0, train=True, augment_images=False,
                                process_index=process_index, process_count=process_count,
                                worker_count=worker_count, normalize_images=False)


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _deep(state, index: int):
  """`state` with every "next_index" moved to `index` (Grain's MapDataset-iterator position)."""
  if isinstance(state, dict):
    return {k: (index if k == "next_index" else _deep(v, index)) for k, v in state.items()}
  if isinstance(state, list):
    return [_deep(v, index) for v in state]
  return state


def _reader_child(data_dir: str, num_records: int, batch_size: int, batches: int, worker_count: int) -> dict:
  """Start-up, RSS, iterator state and restores, in one fresh process."""
  _imports()
  rss_before = _rss_mib()
  start = time.perf_counter()
  ds = _dataset(data_dir, batch_size, worker_count)
  built = time.perf_counter() - start
  it = iter(ds)
  next(it)
  first = time.perf_counter() - start
  rss_first = _rss_mib()
  for _ in range(2):
    next(it)
  state = it.get_state()
  state_bytes = len(json.dumps(state, sort_keys=True).encode())
  expected = next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch_size / (time.perf_counter() - start)
  rss_read, fds_read = _rss_mib(), _open_fds()
  from data_pipelines import tfds_dataset
  shards = len(tfds_dataset.split_files(data_dir, "train"))
  # Restore after 3 batches, into a freshly built pipeline.
  it2 = iter(_dataset(data_dir, batch_size, worker_count))
  start = time.perf_counter()
  it2.set_state(state)
  got = next(it2)
  restore = time.perf_counter() - start
  # Restore in the middle of the first epoch: the state moved there must give the batch that one
  # step from the batch before it gives.
  mid = (num_records // batch_size) // 2
  deep_ok, deep_restore, deep_bytes = None, None, None
  if "next_index" in json.dumps(state) and mid >= 2:
    it3 = iter(_dataset(data_dir, batch_size, worker_count))
    it3.set_state(_deep(state, mid - 1))
    next(it3)
    want = next(it3)
    deep_state = _deep(state, mid)
    deep_bytes = len(json.dumps(deep_state, sort_keys=True).encode())
    it4 = iter(_dataset(data_dir, batch_size, worker_count))
    start = time.perf_counter()
    it4.set_state(deep_state)
    got4 = next(it4)
    deep_restore = time.perf_counter() - start
    deep_ok = _same(want, got4)
  return {"built_s": built, "startup_s": first, "rss_before_mib": rss_before, "rss_first_mib": rss_first,
          "rss_mib": rss_read, "peak_mib": _peak_mib(), "fds": fds_read, "shards": shards, "state_bytes": state_bytes, "state": state,
          "restore_s": restore, "same": _same(expected, got), "deep_restore_s": deep_restore,
          "deep_same": deep_ok, "deep_bytes": deep_bytes, "rate_1": rate}


def _shard_child(data_dir: str, index: int, count: int, local_batch: int, batches: int, worker_count: int,
                 barrier) -> dict:
  """One process of `count`, reading its shard: studies/s after a warm first batch."""
  _imports()
  it = iter(_dataset(data_dir, local_batch * count, worker_count, index, count))
  seen = [next(it)["record_index"]]
  barrier.wait()
  start = time.perf_counter()
  for _ in range(batches):
    seen.append(next(it)["record_index"])
  seconds = time.perf_counter() - start
  return {"index": index, "records": batches * local_batch, "seconds": seconds,
          "seen": np.concatenate(seen), "rss_mib": _rss_mib()}


def _sharded_rate(data_dir: str, num_records: int, count: int, local_batch: int, batches: int,
                  worker_count: int) -> dict:
  """Studies/s of `count` processes together; `disjoint`: within the first epoch no record is read by
  two of them (None when they read more than an epoch, or there is one process)."""
  results = _run_children(_shard_child, [(data_dir, i, count, local_batch, batches, worker_count)
                                         for i in range(count)], barrier_parties=count)
  disjoint = None
  if count > 1 and (batches + 1) * local_batch * count <= num_records:
    seen = [r["seen"] for r in results]
    disjoint = all(len(np.unique(s)) == len(s) for s in seen) and len(np.unique(np.concatenate(seen))) == sum(map(len, seen))
  return {"rate": sum(r["records"] for r in results) / max(r["seconds"] for r in results),
          "disjoint": disjoint, "rss_mib": max(r["rss_mib"] for r in results)}


# ---- driver -----------------------------------------------------------------------------------------

def _du(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _provenance() -> str:
  """Which pipelines.py / prepare.py were measured (the working tree may differ from HEAD)."""
  import hashlib
  import subprocess
  parts = []
  for rel in ("data_pipelines/pipelines.py", "data_pipelines/prepare.py", "data_pipelines/prepare_worker.py"):
    digest = hashlib.sha256((_ROOT / rel).read_bytes()).hexdigest()[:10]
    try:
      dirty = subprocess.run(["git", "-C", str(_ROOT), "diff", "--quiet", "HEAD", "--", rel]).returncode != 0
    except OSError:
      dirty = None
    parts.append(f"{rel} {digest}{' (modified vs HEAD)' if dirty else ''}")
  return "; ".join(parts)


def run_size(n: int, workdir: pathlib.Path, args) -> dict:
  base = workdir / f"n{n}"
  src, out = base / "src", base / "prepared"
  shutil.rmtree(base, ignore_errors=True)
  row = {"size": n}
  start = time.perf_counter()
  row["synth"] = synthesize(src, n, args.image_pool)
  row["synth_s"] = time.perf_counter() - start
  print(f"[{n}] synthesized in {row['synth_s']:.1f} s: {row['synth']}", flush=True)
  prep = _run_children(_prepare_child, [(str(src), str(out), args.workers, args.shard_size)])[0]
  if prep["records"] != n:
    raise RuntimeError(f"prepare wrote {prep['records']} of {n} studies ({prep['skipped']} skipped)")
  row["prepare"] = prep
  row["prepared_bytes"] = _du(out)
  print(f"[{n}] prepared in {prep['seconds']:.1f} s ({n / prep['seconds']:.0f} studies/s), "
        f"phases {', '.join(f'{k} {v:.1f} s' for k, v in prep['phases'].items())}; "
        f"peak RSS of its main process {prep['peak_mib']:.0f} MiB; "
        f"{row['prepared_bytes'] / 2**20:.0f} MiB on disk", flush=True)
  reader = _run_children(_reader_child, [(str(out), n, args.batch_size, args.batches, args.worker_count)])[0]
  row["reader"] = reader
  print(f"[{n}] reader: built {reader['built_s']:.2f} s, first batch {reader['startup_s']:.2f} s, "
        f"RSS {reader['rss_before_mib']:.0f} -> {reader['rss_first_mib']:.0f} -> {reader['rss_mib']:.0f} MiB, "
        f"{reader['fds']} open files ({reader['shards']} shards; RLIMIT_NOFILE soft {_nofile()}); "
        f"state {reader['state_bytes']} B {json.dumps(reader['state'])}; restore {reader['restore_s'] * 1e3:.0f} ms "
        f"(same batch: {reader['same']}), mid-epoch {reader['deep_restore_s'] and reader['deep_restore_s'] * 1e3:.0f} ms "
        f"(same: {reader['deep_same']})", flush=True)
  runs = {1: [], 2: []}
  for _ in range(args.rounds):  # Alternating rounds, medians: the machine is shared.
    for count in (1, 2):
      runs[count].append(_sharded_rate(str(out), n, count, args.batch_size, args.batches, args.worker_count))
  for count, rs in runs.items():
    flags_ = [r["disjoint"] for r in rs]
    row[f"shard{count}"] = {"rate": float(np.median([r["rate"] for r in rs])), "rates": [r["rate"] for r in rs],
                            "disjoint": None if None in flags_ else all(flags_),
                            "rss_mib": max(r["rss_mib"] for r in rs)}
  print(f"[{n}] sharded read (median of {args.rounds}): 1 process {row['shard1']['rate']:.0f}/s "
        f"({', '.join(f'{r:.0f}' for r in row['shard1']['rates'])}), 2 processes {row['shard2']['rate']:.0f}/s "
        f"({', '.join(f'{r:.0f}' for r in row['shard2']['rates'])}); disjoint shards: {row['shard2']['disjoint']}; "
        f"RSS per reader {row['shard2']['rss_mib']:.0f} MiB", flush=True)
  if not args.keep:
    shutil.rmtree(base, ignore_errors=True)
  return row


COLUMNS = ("size", "prep/s", "prep_s", "prep_MiB", "disk_MiB", "build_s", "startup_s", "read_MiB", "fds", "state_B",
           "restore_ms", "mid_ms", "same", "1proc/s", "2proc/s", "x2")


def table(rows: list[dict]) -> str:
  lines = [" ".join(f"{c:>10s}" for c in COLUMNS)]
  for r in rows:
    p, rd = r["prepare"], r["reader"]
    mid = f"{rd['deep_restore_s'] * 1e3:.0f}" if rd["deep_restore_s"] is not None else "-"
    same = rd["same"] and rd["deep_same"] is not False and r["shard2"]["disjoint"] is not False
    cells = (f"{r['size']}", f"{r['size'] / p['seconds']:.0f}", f"{p['seconds']:.1f}",
             f"{p['peak_mib']:.0f}", f"{r['prepared_bytes'] / 2**20:.0f}", f"{rd['built_s']:.2f}",
             f"{rd['startup_s']:.2f}", f"{rd['rss_mib']:.0f}", f"{rd['fds']}", f"{rd['state_bytes']}",
             f"{rd['restore_s'] * 1e3:.0f}", mid, "yes" if same else "NO",
             f"{r['shard1']['rate']:.0f}", f"{r['shard2']['rate']:.0f}",
             f"{r['shard2']['rate'] / r['shard1']['rate']:.2f}")
    lines.append(" ".join(f"{c:>10s}" for c in cells))
  return "\n".join(lines)


def _nofile() -> int:
  return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scaling(rows: list[dict]) -> list[str]:
  """Growth between consecutive sizes; flags what grows faster than the data, or at all."""
  out = []
  for a, b in zip(rows, rows[1:]):
    k = b["size"] / a["size"]
    pa, pb = a["prepare"], b["prepare"]
    ra, rb = a["reader"], b["reader"]
    checks = [
        ("prepare s/study", pb["seconds"] / b["size"], pa["seconds"] / a["size"], 1.5),
        ("prepare peak RSS/study", pb["peak_mib"] / b["size"], pa["peak_mib"] / a["size"], 1.5),
        ("construction s", rb["built_s"], ra["built_s"], 1.5),
        ("start-up s", rb["startup_s"], ra["startup_s"], 1.5),
        ("reader open files", rb["fds"], ra["fds"], 1.5),
        ("state bytes", rb["state_bytes"], ra["state_bytes"], 1.0),
        ("restore s", rb["restore_s"], ra["restore_s"], 2.0),
        ("reader RSS growth MiB/study", (rb["rss_mib"] - rb["rss_before_mib"]) / b["size"],
         (ra["rss_mib"] - ra["rss_before_mib"]) / a["size"], 1.5),
    ] + [(f"prepare phase {name} s/study", pb["phases"][name] / b["size"], pa["phases"][name] / a["size"], 1.5)
         for name in pb["phases"] if pa["phases"].get(name, 0) > 0.2 or pb["phases"][name] > 2.0]
    for name, vb, va, limit in checks:
      ratio = vb / va if va else float("inf")
      flag = "  <-- GROWS" if ratio > limit and (vb - va) > 1e-9 else ""
      out.append(f"{a['size']}->{b['size']} (x{k:g}): {name}: {va:.4g} -> {vb:.4g} (x{ratio:.2f}){flag}")
  for r in rows:
    # ArrayRecordDataSource keeps one open reader (file descriptor) per shard it has read from.
    shards, limit = r["reader"]["shards"], _nofile()
    if shards > limit // 2:
      out.append(f"{r['size']}: {shards} shards: a reader ends up with ~{shards} open files per data dir and "
                 f"Grain worker; RLIMIT_NOFILE soft limit here {limit} (1024 fails: 'Too many open files')")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="16000,160000,1600000", help="studies per synthetic set, comma-separated")
  parser.add_argument("--workdir", default=None, help="where the sets go (default: a new folder under /tmp)")
  parser.add_argument("--keep", action="store_true", help="keep the generated data")
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="prepare worker processes")
  parser.add_argument("--shard_size", type=int, default=512, help="prepare: studies per shard (its default)")
  parser.add_argument("--image_pool", type=int, default=1024, help="distinct image files (0: one per study)")
  parser.add_argument("--batch_size", type=int, default=32, help="rows per batch (per process when sharded)")
  parser.add_argument("--batches", type=int, default=100, help="batches timed per throughput measurement")
  parser.add_argument("--rounds", type=int, default=3, help="alternating 1-/2-process throughput rounds")
  parser.add_argument("--worker_count", type=int, default=0, help="Grain worker processes per reader")
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
  workdir = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp(prefix="data_scale_", dir="/tmp"))
  workdir.mkdir(parents=True, exist_ok=True)
  print(f"data_scale: sizes {sizes}, workdir {workdir}, prepare workers {args.workers}, shard_size "
        f"{args.shard_size}, {STORED}x{STORED} PNG, batch {args.batch_size} x {args.batches} timed, "
        f"grain worker_count {args.worker_count}\n  measuring {_provenance()}", flush=True)
  rows = []
  start = time.perf_counter()
  try:
    for n in sizes:
      rows.append(run_size(n, workdir, args))
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f"\ndata_scale: {time.perf_counter() - start:.0f} s total")
  print(table(rows))
  print("  prep/s: studies/s, manifest read to metadata written; prep_MiB: peak RSS of prepare's main process; "
        "build_s: clip_dataset() call; startup_s: construction to first batch; read_MiB / fds: reader RSS and open "
        "files after the timed batches; state_B: JSON iterator "
        "state; restore_ms / mid_ms: set_state + next batch, after 3 batches / mid first epoch; same: restored "
        "batches equal, and the 2 processes' shards disjoint; x2: 2proc/1proc")
  for line in scaling(rows):
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
