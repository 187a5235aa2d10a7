"""The preparation CLI: ArrayRecord shards in TFDS format, summary.json, skip policy, resumption,
several machines, parallel workers, and reading back without TensorFlow."""
import json
import subprocess
import sys

import grain
import numpy as np
import pytest

import data_fixtures as fx
from data_pipelines import images, prepare, tfds_dataset


def _run(dataset, root, out, **kw):
  kw.setdefault("image_size", 32)
  return prepare.run(prepare.Options(dataset, str(out), str(root), **kw))


def _records(out, split):
  files = tfds_dataset.split_files(out, split)
  source = grain.sources.ArrayRecordDataSource(files)
  return [tfds_dataset.parse(source[i]) for i in range(len(source))]


def test_mimic_end_to_end(tmp_path):
  out = tmp_path / "out"
  summary = _run("mimic_cxr", fx.mimic_cxr(tmp_path / "src"), out, max_skip_fraction=0.5)
  assert summary["status"] == "ok" and summary["records"] == {"train": 2, "test": 1}
  skipped = {s["input"]: s["reason"] for s in summary["skipped"]}
  # The corrupt JPEG is skipped and named; its study keeps its other, readable view.
  assert skipped["files/p10/p10000898/s50771383/d6.jpg"].startswith("corrupt or truncated JPEG")
  assert skipped["54205396"] == "empty report"
  assert summary["filtered_by_reason"] == {"not a frontal view": 2, "no frontal view": 1}
  test = _records(out, "test")[0]
  assert test["study_id"] == "50771383" and test["image_paths"] == ["files/p10/p10000898/s50771383/d5.jpg"]
  assert test["views"] == ["PA"] and len(test["images"]) == 1
  assert images.decode_png(test["images"][0]).shape == (32, 32)
  train = _records(out, "train")
  assert train[0]["report_tagged"].startswith("[FINDINGS] There is a small left pleural effusion")
  assert train[0]["labels"].dtype == np.int8 and train[0]["labels"].shape == (14,)
  assert json.loads((out / "summary.json").read_text())["records"] == summary["records"]


def test_metadata_sidecar_and_tfds_agree_with_fast_parse(tmp_path):
  import tensorflow_datasets as tfds
  out = tmp_path / "out"
  _run("manifest", fx.manifest(tmp_path / "src", n=12), out, shard_size=3)
  meta = tfds_dataset.read_metadata(out, "train")
  records = _records(out, "train")
  assert [m["study_id"] for m in meta] == [r["study_id"] for r in records]
  reference = tfds.builder_from_directory(str(tfds_dataset.tfds_dir(out))).as_data_source("train")
  assert len(reference) == len(records)
  for ref, mine in zip(reference, records):
    assert ref["images"] == mine["images"] and ref["report"].decode() == mine["report"]
    assert [v.decode() for v in ref["views"]] == mine["views"]
    np.testing.assert_array_equal(ref["labels"], mine["labels"])
  assert "tensorflow" not in sys.modules


def test_16bit_padchest_and_the_skip_fraction_gate(tmp_path):
  root = fx.padchest(tmp_path / "src")
  with pytest.raises(prepare.PrepareError) as e:
    _run("padchest", root, tmp_path / "out")
  message = str(e.value)
  assert message.startswith("1 of 4 studies (25.0%) and 1 of 4 images (25.0%) skipped, above "
                            "--max_skip_fraction=0.01; first: 0/img3_0.png: corrupt or truncated PNG")
  failed = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert failed["status"] == "failed"
  assert not (tfds_dataset.tfds_dir(tmp_path / "out") / "dataset_info.json").exists()
  # Allowing the skips finishes from the written shards, and 16-bit PNGs were windowed, not clipped.
  summary = _run("padchest", root, tmp_path / "out", max_skip_fraction=0.5)
  assert summary["status"] == "ok" and sum(summary["records"].values()) == 3
  pixels = images.decode_png(_records(tmp_path / "out", next(iter(summary["records"])))[0]["images"][0])
  assert pixels.max() > 200 and np.unique(pixels).size > 20


def test_resume_redoes_only_unfinished_shards(tmp_path, capsys):
  root, out = fx.manifest(tmp_path / "src", n=12), tmp_path / "out"
  _run("manifest", root, out, shard_size=2)
  shards = sorted(tfds_dataset.tfds_dir(out).glob("cxr_clip-*"))
  mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
  (out / "work" / "train-00001-of-00004.json").unlink()  # As if killed while writing it.
  capsys.readouterr()
  _run("manifest", root, out, shard_size=2, workers=2)
  assert "5 already done, 1 to write" in capsys.readouterr().out
  changed = [p.name for p in shards if p.stat().st_mtime_ns != mtimes[p.name]]
  assert changed == ["cxr_clip-train.array_record-00001-of-00004"]
  _run("manifest", root, out, shard_size=2, workers=2)
  assert "6 already done, 0 to write" in capsys.readouterr().out
  _run("manifest", root, out, shard_size=3)  # A different plan replaces the old shards.
  assert sorted(p.name for p in tfds_dataset.tfds_dir(out).glob("cxr_clip-train*")) == [
      f"cxr_clip-train.array_record-0000{k}-of-00003" for k in range(3)]


def test_several_machines_then_assemble(tmp_path):
  root = fx.manifest(tmp_path / "src", n=12)
  single = _run("manifest", root, tmp_path / "one", shard_size=2)
  for task in range(2):
    assert _run("manifest", root, tmp_path / "two", shard_size=2, num_tasks=2, task_index=task) == {}
  assert not (tfds_dataset.tfds_dir(tmp_path / "two") / "dataset_info.json").exists()
  assembled = _run("manifest", root, tmp_path / "two", shard_size=2)
  assert assembled["records"] == single["records"]
  for split in single["records"]:
    two, one = _records(tmp_path / "two", split), _records(tmp_path / "one", split)
    assert [r["images"] for r in two] == [r["images"] for r in one]


def test_parallel_workers_match_serial(tmp_path):
  root = fx.manifest(tmp_path / "src", n=8)
  _run("manifest", root, tmp_path / "serial", shard_size=2)
  _run("manifest", root, tmp_path / "parallel", shard_size=2, workers=2)
  for split in ("train", "validation", "test"):
    assert _records(tmp_path / "serial", split) and str(_records(tmp_path / "serial", split)) == str(
        _records(tmp_path / "parallel", split))


def test_cli_errors_are_one_line(tmp_path):
  rows = [{"image": "1.png", "report": "[IMPRESSION] a.", "patient_id": "alice", "split": "train"},
          {"image": "2.png", "report": "[IMPRESSION] b.", "patient_id": "alice", "split": "test"}]
  fx.manifest(tmp_path, rows)
  proc = subprocess.run([sys.executable, "-m", "data_pipelines.prepare", "--dataset=manifest",
                         f"--root={tmp_path}", f"--output={tmp_path / 'out'}"], capture_output=True, text=True)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: 1 patients appear in more than one split: alice (train/test); "
      "fix the split column, or leave it empty for a patient-level split"]


def test_demo_set_from_a_folder_of_iu_reports(tmp_path):
  summary = _run("demo", fx.iu_xray(tmp_path / "iu", n=4), tmp_path / "out", image_size=48)
  assert sum(summary["records"].values()) == 3 and summary["filtered_by_reason"] == {"empty report": 1}
  sheet = tmp_path / "out" / "demo_contact_sheet.png"
  assert sheet.is_file() and sheet.stat().st_size > 1000
  split = next(iter(summary["records"]))
  assert images.decode_png(_records(tmp_path / "out", split)[0]["images"][0]).shape == (48, 48)


def test_monochrome1_dicom_in_a_manifest_is_stored_inverted(tmp_path):
  raw = fx.radiograph(7, size=(64, 64), bits=16)
  fx.write_dicom(tmp_path / "src" / "a.dcm", raw, monochrome1=True)
  fx.manifest(tmp_path / "src", [{"image": "a.dcm", "report": "[IMPRESSION] Clear.", "split": "train"}])
  _run("manifest", tmp_path / "src", tmp_path / "out", image_size=64)
  stored = images.decode_png(_records(tmp_path / "out", "train")[0]["images"][0]).astype(float)
  low = raw < np.median(raw)  # Low raw values are bright in MONOCHROME1.
  assert stored[low].mean() > stored[~low].mean() + 50
