"""Dataset adapters on fixtures in each source's exact on-disk layout (tests/data_fixtures.py), and
the shared policies: frontal filter, empty reports, unsafe paths, patients in two splits."""
import json
import os

import pytest

import data_fixtures as fx
from data_pipelines import reports, sources
from data_pipelines.sources import paths, schema


def _by_id(col):
  return {r.study_id: r for r in col.records}


def _reasons(skips):
  return {s.input: s.reason for s in skips}


def test_mimic_cxr_layout(tmp_path):
  col = sources.load("mimic_cxr", fx.mimic_cxr(tmp_path))
  recs = _by_id(col)
  assert set(recs) == {"50414267", "53189527", "50771383"}
  first = recs["50414267"]
  assert first.image == ["files/p10/p10000032/s50414267/d1.jpg"] and first.view == ["PA"]
  assert first.findings.startswith("There is a small left pleural effusion")
  assert first.impression == "Small left pleural effusion."
  assert first.tagged.startswith("[FINDINGS] There is") and "[IMPRESSION] Small left" in first.tagged
  assert first.patient_id == "10000032" and first.split == "train"
  assert recs["50771383"].view == ["PA", "AP"]
  # A non-UTF-8 (Latin-1) report is decoded, not dropped: the ñ survives.
  assert "Pequeño derrame" in recs["50771383"].report
  assert _reasons(col.skipped) == {"54205396": "empty report"}
  filtered = _reasons(col.filtered)
  assert filtered["files/p10/p10000032/s50414267/d2.jpg"] == "not a frontal view (LATERAL)"
  assert filtered["57375967"] == "no frontal view"
  assert not col.patient_overlap


def test_mimic_official_split_overlap_is_reported_not_an_error(tmp_path):
  col = sources.load("mimic_cxr", fx.mimic_cxr(tmp_path, overlap=True))
  assert col.patient_overlap == {"10000032": ["train", "test"]}
  assert any("10000032 (train/test)" in n for n in col.notes)


def test_mimic_sectioned_csv_replaces_txt_reports(tmp_path):
  root = fx.mimic_cxr(tmp_path)
  fx.write_csv(root / "mimic_cxr_sectioned.csv", [
      {"study": "s50414267", "impression": "", "findings": "", "last_paragraph": "Clear lungs.", "comparison": ""},
      {"study": "s53189527", "impression": "No effusion.", "findings": "Normal heart.", "last_paragraph": "",
       "comparison": ""}])
  col = sources.load("mimic_cxr", root)
  recs = _by_id(col)
  assert recs["50414267"].impression == "Clear lungs." and recs["53189527"].findings == "Normal heart."
  assert _reasons(col.skipped)["50771383"] == "no row in mimic_cxr_sectioned.csv"


def test_mimic_missing_table_is_one_clear_error(tmp_path):
  with pytest.raises(sources.SourceError, match="mimic-cxr-2.0.0-split.csv"):
    sources.load("mimic_cxr", tmp_path)


def test_chexpert_plus_layout(tmp_path):
  col = sources.load("chexpert_plus", fx.chexpert_plus(tmp_path))
  recs = _by_id(col)
  assert set(recs) == {"patient00000/study1", "patient00000/study2", "patient00001/study1"}
  rec = recs["patient00000/study1"]
  assert rec.image == ["PNG/train/patient00000/study1/view1_frontal.png"] and rec.view == ["PA"]
  assert rec.findings == "The lungs are clear." and rec.patient_id == "pid0"
  # Without section columns the full report text is parsed.
  assert recs["patient00000/study2"].impression == "Small left pleural effusion."
  assert recs["patient00001/study1"].split == "validation"
  assert len(col.filtered) == 3 and col.official_split


def test_iu_xray_layout(tmp_path):
  col = sources.load("iu_xray", fx.iu_xray(tmp_path))
  recs = _by_id(col)
  assert set(recs) == {"CXR1", "CXR2"}
  assert recs["CXR1"].image == ["NLMCXR_png/CXR1_1_IM-0001-1001.png", "NLMCXR_png/CXR1_1_IM-0001-2001.png"]
  assert recs["CXR1"].impression == f"Normal chest x-{reports.PLACEHOLDER}."  # IU's XXXX unified.
  assert _reasons(col.skipped) == {"CXR3": "empty report"}
  assert recs["CXR1"].split == schema.hash_split("CXR1")
  assert any("no view metadata" in n for n in col.notes)


def test_iu_xray_real_reports(tmp_path, asset):
  xml_dir = asset("iu_reports") / "ecgen-radiology"
  (tmp_path / "ecgen-radiology").mkdir()
  for name in ("1.xml", "2.xml", "3.xml"):
    os.symlink(xml_dir / name, tmp_path / "ecgen-radiology" / name)
  col = sources.load("iu_xray", tmp_path)
  assert [r.study_id for r in col.records] == ["CXR1", "CXR2", "CXR3"]
  assert col.records[0].image[0] == "CXR1_1_IM-0001-3001.png"
  assert "pneumothorax" in col.records[0].findings


def test_padchest_layout(tmp_path):
  col = sources.load("padchest", fx.padchest(tmp_path))
  recs = _by_id(col)
  assert set(recs) == {"st0", "st1", "st2", "st3"}
  assert recs["st1"].image == ["0/img1_0.png"] and recs["st1"].view == ["PA"]
  assert recs["st1"].report == "pequeño derrame pleural izquierdo."  # Spanish kept as written.
  assert recs["st0"].split == recs["st1"].split == schema.hash_split("pt0")  # Patient-level split.
  assert all(s.reason == "not a frontal view (L)" for s in col.filtered)


def test_manifest_jsonl_and_csv(tmp_path):
  rows = [{"image": ["a/1.png", "a/2.png"], "view": ["PA", "LATERAL"],
           "report": "FINDINGS: Clear.\n\nIMPRESSION: Normal.",
           "study_id": "s1", "patient_id": "p1", "split": "val"},
          {"image": "b/1.png", "findings": "Effusion.", "impression": "", "study_id": "s2"},
          {"image": "c/1.png", "report": "Untagged impression text."},
          {"image": "c/2.png", "report": "x", "study_id": "s4", "split": "holdout"}]
  col = sources.load("manifest", fx.manifest(tmp_path, rows))
  recs = _by_id(col)
  assert recs["s1"].image == ["a/1.png"] and recs["s1"].split == "validation"
  assert recs["s1"].findings == "Clear." and recs["s1"].impression == "Normal."
  assert recs["s2"].patient_id == "s2" and recs["s2"].split == schema.hash_split("s2")
  assert recs["c/1.png"].impression == "Untagged impression text."
  assert _reasons(col.skipped) == {"manifest.jsonl line 4": "unknown split 'holdout'"}
  csv_root = tmp_path / "csv"
  csv_root.mkdir()
  fx.manifest(csv_root, [{"image": "x/1.png|x/2.png", "view": "AP|PA", "report": "[IMPRESSION] Fine.",
                          "study_id": "s9", "patient_id": "", "split": "test"}], fmt="csv")
  rec = sources.load("manifest", csv_root).records[0]
  assert rec.image == ["x/1.png", "x/2.png"] and rec.tagged == "[IMPRESSION] Fine."


def test_manifest_bad_rows_are_skipped_with_reasons(tmp_path):
  (tmp_path / "manifest.jsonl").write_text(
      '{"image": "a.png", "report": "[IMPRESSION] ok."}\n{not json\n[1, 2]\n'
      + json.dumps({"image": "../secret.png", "report": "[IMPRESSION] x."}) + "\n"
      + json.dumps({"image": "/etc/passwd", "report": "[IMPRESSION] x."}) + "\n"
      + json.dumps({"image": "b.png", "report": ""}) + "\n")
  col = sources.load("manifest", tmp_path)
  assert [r.study_id for r in col.records] == ["a.png"]
  reasons = _reasons(s for s in col.skipped if s.kind == "study")
  assert reasons["manifest.jsonl line 2"].startswith("invalid JSON line")
  assert reasons["manifest.jsonl line 3"] == "invalid JSON line: not a JSON object"
  assert reasons["../secret.png"] == "no usable image (path '../secret.png' leaves the dataset root)"
  assert reasons["/etc/passwd"].startswith("no usable image (absolute path")
  assert reasons["b.png"] == "empty report"
  images = _reasons(s for s in col.skipped if s.kind == "image")
  assert images == {"../secret.png": "path '../secret.png' leaves the dataset root",
                    "/etc/passwd": "absolute path '/etc/passwd' (paths must be relative to the root)"}


def test_manifest_patient_in_two_splits_is_an_error_naming_them(tmp_path):
  rows = [{"image": "1.png", "report": "[IMPRESSION] a.", "study_id": "s1", "patient_id": "alice", "split": "train"},
          {"image": "2.png", "report": "[IMPRESSION] b.", "study_id": "s2", "patient_id": "alice", "split": "test"},
          {"image": "3.png", "report": "[IMPRESSION] c.", "study_id": "s3", "patient_id": "bob", "split": "test"}]
  with pytest.raises(sources.SourceError, match=r"1 patients appear in more than one split: alice \(train/test\)"):
    sources.load("manifest", fx.manifest(tmp_path, rows))


def test_manifest_csv_missing_column(tmp_path):
  fx.write_csv(tmp_path / "manifest.csv", [{"path": "a.png", "report": "x"}])
  with pytest.raises(sources.SourceError, match=r"missing column\(s\) image"):
    sources.load("manifest", tmp_path)


def test_symlink_leaving_the_root_is_rejected(tmp_path):
  root, outside = tmp_path / "root", tmp_path / "outside"
  root.mkdir()
  outside.mkdir()
  (outside / "x.png").write_bytes(b"x")
  (root / "in.png").write_bytes(b"x")
  os.symlink(outside / "x.png", root / "escape.png")
  os.symlink(root / "in.png", root / "alias.png")
  assert paths.resolve_under(root, "alias.png") == (root / "in.png").resolve()
  with pytest.raises(paths.UnsafePath, match="symlink leading outside"):
    paths.resolve_under(root, "escape.png")
  for bad in ("../x.png", "a/../../x.png", "/abs.png", "C:\\x.png", ""):
    with pytest.raises(paths.UnsafePath):
      paths.check_relative(bad)


def test_hash_split_is_stable_and_balanced():
  splits = [schema.hash_split(f"patient{i}") for i in range(2000)]
  assert splits[:5] == [schema.hash_split(f"patient{i}") for i in range(5)]
  assert 0.75 < splits.count("train") / 2000 < 0.85 and splits.count("test") > 150


def test_manifest_rows_of_one_study_must_agree(tmp_path):
  rows = [{"image": "1.png", "report": "[IMPRESSION] a.", "study_id": "s1", "patient_id": "p1", "split": "train"},
          {"image": "2.png", "report": "", "study_id": "s1", "patient_id": "p1", "split": "train"},
          {"image": "3.png", "report": "", "study_id": "s1", "patient_id": "p2", "split": "train"}]
  col = sources.load("manifest", fx.manifest(tmp_path, rows))
  assert col.records[0].image == ["1.png", "2.png"]
  assert _reasons(col.skipped) == {
      "manifest.jsonl line 3": "conflicts with an earlier row of study s1 (patient or split)"}


def test_demo_set_reads_iu_reports(tmp_path):
  col = sources.load("demo", fx.iu_xray(tmp_path))
  assert [r.study_id for r in col.records] == ["CXR1", "CXR2"]
  assert col.records[0].source.study_id == "CXR1" and col.records[0].view == ["PA"]
  assert col.records[0].split == schema.hash_split("CXR1")  # The same rule as the IU adapter's.
  assert [s.reason for s in col.filtered] == ["empty report: no FINDINGS or IMPRESSION text"]
