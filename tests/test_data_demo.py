"""The embedded demo set: real IU reports, deterministic splits, radiographs drawn from findings."""
import collections

import numpy as np
import pytest
from PIL import Image

from data_pipelines import demo
from data_pipelines import demo_render
from data_pipelines import reports


@pytest.fixture(scope="module")
def studies(asset):
  asset("radiograph")  # render() reads it from the cache
  return demo.demo_studies(asset("iu_reports"))


def _study(text: str, study_id: str = "CXR-test") -> demo.DemoStudy:
  return demo.DemoStudy(study_id, study_id, "train", reports.Report(findings=text), demo.image_seed(study_id))


def _image(text: str, size: int = 128, study_id: str = "CXR-test") -> np.ndarray:
  return demo.render(_study(text, study_id), size).astype(np.float32)


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
  n = img.shape[0]
  return float(img[int(y0 * n):int(y1 * n), int(x0 * n):int(x1 * n)].mean())


def test_studies(studies):
  assert len(studies) > 3900  # 3,955 reports, a few with neither findings nor impression
  ids = [s.study_id for s in studies]
  assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0].startswith("CXR")
  assert all(s.patient_id == s.study_id and not s.report.is_empty() for s in studies)
  counts = collections.Counter(s.split for s in studies)
  assert set(counts) == set(demo.SPLITS)
  assert abs(counts["train"] / len(studies) - 0.8) < 0.03 and abs(counts["test"] / len(studies) - 0.1) < 0.02


def test_split_and_seed_are_pure_functions_of_the_id():
  assert demo.split_of("CXR1") == demo.split_of("CXR1")
  assert demo.image_seed("CXR1") == demo.image_seed("CXR1") != demo.image_seed("CXR2")
  assert 0 <= demo.image_seed("CXR1") < 2 ** 63


def test_skips_are_counted(tmp_path, asset):
  xml_dir = tmp_path / "ecgen-radiology"
  xml_dir.mkdir()
  source = sorted((asset("iu_reports") / "ecgen-radiology").glob("*.xml"))[0].read_bytes()
  (xml_dir / "1.xml").write_bytes(source)
  (xml_dir / "2.xml").write_bytes(source)  # same uId again
  (xml_dir / "3.xml").write_bytes(b"<eCitation><uId id='CXR9'/></eCitation>")  # no text
  (xml_dir / "4.xml").write_bytes(b"\x00not xml")
  skipped = []
  found = demo.demo_studies(tmp_path, skipped)
  assert len(found) == 1
  assert [name for name, _ in skipped] == ["2.xml", "3.xml", "4.xml"]
  assert "duplicate" in skipped[0][1] and "empty report" in skipped[1][1] and "malformed" in skipped[2][1]
  with pytest.raises(FileNotFoundError):
    demo.demo_studies(tmp_path / "missing")


def test_render_is_deterministic_and_varies_per_study():
  a = demo.render(_study("Small left pleural effusion."), 64)
  assert a.dtype == np.uint8 and a.shape == (64, 64)
  np.testing.assert_array_equal(a, demo.render(_study("Small left pleural effusion."), 64))
  other = demo.render(_study("Small left pleural effusion.", "CXR-other"), 64)
  assert np.abs(a.astype(int) - other).mean() > 3
  assert demo.render(_study("Normal."), 256).shape == (256, 256)


def test_normal_report_draws_nothing():
  normal = _study("Heart size normal. No pneumothorax or pleural effusion. No acute disease.")
  assert demo_render.drawn(demo.findings(normal)) == []
  np.testing.assert_array_equal(demo.render(normal, 96), demo.render(_study(""), 96))


def test_effusion_on_the_stated_side():
  # The patient's left is the image right; an effusion is dense (bright) at the lung base.
  normal = _image("No acute disease.")
  left = _image("Large left pleural effusion.") - normal
  right = _image("Large right pleural effusion.") - normal
  image_right_base, image_left_base = (0.65, 0.9, 0.55, 0.72), (0.1, 0.35, 0.55, 0.7)
  assert _region(left, *image_right_base) > 25 and abs(_region(left, *image_left_base)) < 3
  assert _region(right, *image_left_base) > 25 and abs(_region(right, *image_right_base)) < 3


def test_severity_changes_size():
  normal = _image("No acute disease.")
  small = _image("Small left pleural effusion.") - normal
  large = _image("Large left pleural effusion.") - normal
  assert (large > 20).sum() > 2 * (small > 20).sum() > 0


def test_pneumothorax_is_an_apical_lucency_on_its_side():
  normal = _image("No acute disease.")
  right = _image("Large right pneumothorax.") - normal
  assert (right < -20).sum() > 100
  dark = np.argwhere(right < -20)[:, 1].mean() / right.shape[1]
  assert dark < 0.4  # the patient's right: the image left


def test_cardiomegaly_widens_the_heart():
  normal = _image("No acute disease.")
  big = _image("Severe cardiomegaly.") - normal
  assert _region(big, 0.72, 0.82, 0.6, 0.7) > 15 and abs(_region(big, 0.05, 0.3, 0.1, 0.5)) < 2


def test_devices_and_nodules_are_drawn():
  normal = _image("No acute disease.", 256)
  for text in ("Left chest wall pacemaker.", "Right upper lobe nodule.", "Calcified granuloma.",
               "Moderate pulmonary edema.", "Right lower lobe consolidation.", "Left basilar atelectasis.",
               "Hyperinflated lungs.", "Endotracheal tube in place."):
    assert np.abs(_image(text, 256) - normal).max() > 60, text


def test_contact_sheet(tmp_path, studies):
  path = tmp_path / "sheet.png"
  demo.write_contact_sheet(studies[:300], path, size=96, n=12)
  sheet = Image.open(path)
  assert sheet.width == 6 * 96 and sheet.height > 2 * 96
