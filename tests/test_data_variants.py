"""Report variants: meaning-preserving positives and hard negatives with exactly one injected error."""
import numpy as np
import pytest

from data_pipelines import labels
from data_pipelines import reports
from data_pipelines import variants

REPORT = ("[FINDINGS] There is a small left pleural effusion. The heart is mildly enlarged. No pneumothorax. "
          "s/p CABG. [IMPRESSION] Small left pleural effusion. Mild cardiomegaly.")
NORMAL = "[FINDINGS] Heart size normal. Lungs are clear. [IMPRESSION] No acute disease."


def _strip(found):
  return {k: v for k, v in found.labels.items() if k != "No Finding"}


def _check_one_error(before_text, variant):
  """Re-labels both texts and checks the variant carries exactly the error its kind names."""
  before, after = labels.extract(before_text), labels.extract(variant.text)
  a, b = _strip(before), _strip(after)
  changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
  if variant.kind == "false_finding":
    assert len(changed) == 1 and b[changed.pop()] == 1
  elif variant.kind == "false_negation":
    assert len(changed) == 1 and (f := changed.pop()) and a[f] == 1 and b[f] == 0
  else:
    assert not changed
    field = "severity" if variant.kind == "severity" else ("laterality" if "laterality" in variant.change else "zone")
    diff = {k for k in labels.FINDINGS if getattr(before, field).get(k) != getattr(after, field).get(k)}
    assert len(diff) == 1


def test_positives_keep_labels_and_differ():
  found = variants.positives(REPORT, np.random.default_rng(0))
  assert {v.change for v in found} == {"abbreviated", "abbreviations expanded", "sentences reordered within sections",
                                       "findings dropped", "impression dropped"}
  for v in found:
    assert v.kind == "positive" and v.text != REPORT
    if "dropped" not in v.change:
      assert labels.extract(v.text).labels == labels.extract(REPORT).labels
  expanded = next(v for v in found if v.change == "abbreviations expanded")
  assert "status post coronary artery bypass graft" in expanded.text


def test_positives_of_plain_text_drop_nothing():
  found = variants.positives("No PTX. Heart normal.", np.random.default_rng(0))
  assert {v.change for v in found} == {"abbreviations expanded", "sentences reordered within sections"}


def test_laterality():
  v = variants.hard_negative(REPORT, np.random.default_rng(0), "laterality")
  assert v.kind == "laterality" and v.change == "laterality: left -> right (Pleural Effusion)"
  assert v.text.count("right pleural effusion") == 2  # every mention of that finding, consistently
  _check_one_error(REPORT, v)


def test_location_swap_when_no_side():
  text = "Upper lobe consolidation."
  v = variants.hard_negative(text, np.random.default_rng(0), "laterality")
  assert v.text == "Lower lobe consolidation." and "zone" in v.change


def test_severity_change_and_insertion():
  v = variants.hard_negative("There is a small left pleural effusion.", np.random.default_rng(0), "severity")
  assert v.text == "There is a large left pleural effusion."
  assert v.change == "severity: small -> large (Pleural Effusion)"
  v = variants.hard_negative("Left pleural effusion.", np.random.default_rng(0), "severity")
  assert v.text == "Large left pleural effusion." and "none stated" in v.change
  v = variants.hard_negative("The heart is enlarged.", np.random.default_rng(0), "severity")
  assert v.text == "The heart is markedly enlarged."


def test_false_finding():
  v = variants.hard_negative(NORMAL, np.random.default_rng(1), "false_finding")
  assert v.kind == "false_finding" and v.change.startswith("false finding: added")
  assert reports.from_tagged(v.text).impression == "No acute disease."  # inserted into FINDINGS
  _check_one_error(NORMAL, v)


def test_false_negation():
  text = "[FINDINGS] There is a small left pleural effusion. [IMPRESSION] Left effusion."
  v = variants.hard_negative(text, np.random.default_rng(0), "false_negation")
  assert v.text == "[FINDINGS] There is no left pleural effusion. [IMPRESSION] No left effusion."
  assert v.change == "false negation: Pleural Effusion denied"
  v = variants.hard_negative("The heart is mildly enlarged.", np.random.default_rng(0), "false_negation")
  assert v.text == "The heart is not enlarged."


def test_none_when_not_applicable():
  rng = np.random.default_rng(0)
  for kind in ("laterality", "severity", "false_negation"):
    assert variants.hard_negative(NORMAL, rng, kind) is None


def test_random_type_is_seeded():
  runs = [variants.hard_negative(REPORT, np.random.default_rng(5)) for _ in range(2)]
  assert runs[0] == runs[1] and runs[0].kind in variants.ERROR_TYPES
  kinds = {variants.hard_negative(REPORT, np.random.default_rng(s)).kind for s in range(20)}
  assert kinds == set(variants.ERROR_TYPES)


def test_unknown_type():
  with pytest.raises(ValueError, match="unknown error type"):
    variants.hard_negative(REPORT, np.random.default_rng(0), "typo")


def test_real_reports_get_exactly_one_error(asset):
  from data_pipelines import demo
  studies = demo.demo_studies(asset("iu_reports"))[::60]
  counts = dict.fromkeys(variants.ERROR_TYPES, 0)
  for i, study in enumerate(studies):
    text = study.report.tagged()
    for kind in variants.ERROR_TYPES:
      v = variants.hard_negative(text, np.random.default_rng(i), kind)
      if v is not None:
        counts[kind] += 1
        _check_one_error(text, v)
  assert counts["false_finding"] == len(studies)
  assert min(counts.values()) >= 5, counts
