"""Report variants: meaning-preserving positives and hard negatives with exactly one injected error."""
import functools

import numpy as np
import pytest

from data_pipelines import labels
from data_pipelines import reports
from data_pipelines import shorthand
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
                                       "telegraphic shorthand", "findings dropped", "impression dropped"}
  assert len({v.text for v in found}) == len(found)
  for v in found:
    assert v.kind == "positive" and v.text != REPORT
    if "dropped" not in v.change:  # the labeler reads words, so shorthand is compared through its expansion
      assert variants.meaning(v.text) == variants.meaning(REPORT)
  by_change = {v.change: v.text for v in found}
  assert "status post coronary artery bypass graft" in by_change["abbreviations expanded"]
  assert "sm L pl eff" in by_change["abbreviated"]
  assert by_change["telegraphic shorthand"].startswith("[FINDINGS] Sm L pl eff. Heart mildly enl. No PTX.")


def test_positives_of_plain_text_drop_nothing():
  found = variants.positives("No PTX. Heart normal.", np.random.default_rng(0))
  # The shorthand of these two sentences is their abbreviation, so it is not listed twice.
  assert {v.change for v in found} == {"abbreviated", "abbreviations expanded", "sentences reordered within sections"}


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
  # Preferred: undo a denial (a one-word error); the normal heart becomes an enlarged one.
  v = variants.hard_negative(NORMAL, np.random.default_rng(1), "false_finding")
  assert v.kind == "false_finding" and v.text == NORMAL.replace("Heart size normal", "Heart size enlarged")
  assert v.change == "false finding: asserted Cardiomegaly, which the report denies"
  _check_one_error(NORMAL, v)
  for text, flipped in (("No pneumothorax.", "Pneumothorax."),
                        ("There is no focal consolidation.", "There is focal consolidation."),
                        ("Pleural effusion is not seen.", "Pleural effusion is seen.")):
    assert variants.hard_negative(text, np.random.default_rng(0), "false_finding").text == flipped
  # A denial shared by a list cannot be undone for one item: a sentence is added instead.
  text = "[FINDINGS] Lungs are clear. No pleural effusion or pneumothorax. [IMPRESSION] No acute disease."
  v = variants.hard_negative(text, np.random.default_rng(1), "false_finding")
  assert v.change.startswith("false finding: added")
  assert reports.from_tagged(v.text).impression == "No acute disease."  # inserted into FINDINGS
  _check_one_error(text, v)


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


def test_hard_negatives_distinct_types_first():
  found = variants.hard_negatives(REPORT, np.random.default_rng(0), n=3)
  assert len(found) == 3 and len({v.kind for v in found}) == 3
  assert len({v.text for v in found} | {REPORT}) == 4
  for v in found:
    _check_one_error(REPORT, v)
  assert found == variants.hard_negatives(REPORT, np.random.default_rng(0), n=3)


def test_hard_negatives_fill_up_with_one_type():
  # Only false findings apply to a normal report: further rounds find other ones.
  found = variants.hard_negatives(NORMAL, np.random.default_rng(0), n=3)
  assert [v.kind for v in found] == ["false_finding"] * 3 and len({v.text for v in found}) == 3
  for v in found:
    _check_one_error(NORMAL, v)
  assert variants.hard_negatives(NORMAL, np.random.default_rng(0), n=3, types=("laterality",)) == []


def test_hard_negatives_weights():
  rng = np.random.default_rng(0)
  weights = {"laterality": 1, "severity": 1, "false_negation": 1, "false_finding": 0}
  for _ in range(10):
    assert "false_finding" not in {v.kind for v in variants.hard_negatives(REPORT, rng, n=4, weights=weights)}
  # Heavy types come first: with n=1 the flip types win nearly always.
  firsts = [variants.hard_negatives(REPORT, rng, n=1, weights={**weights, "false_finding": 0.01})[0].kind
            for _ in range(30)]
  assert firsts.count("false_finding") <= 2
  with pytest.raises(ValueError, match="unknown error type"):
    variants.hard_negatives(REPORT, rng, types=("typo",))


def _differing_sentences(a, b):
  sa = [s for _, body in reports.split_tagged(a) for s in reports.split_sentences(body)]
  sb = [s for _, body in reports.split_tagged(b) for s in reports.split_sentences(body)]
  return len(sa) == len(sb), sum(x != y for x, y in zip(sa, sb))


@pytest.mark.parametrize("restyle", [reports.abbreviate, functools.partial(shorthand.telegraphic, seed=3)],
                         ids=["abbreviate", "telegraphic"])
def test_hard_negatives_restyled_differ_only_in_the_error(restyle):
  positive = restyle(REPORT)
  found = variants.hard_negatives(REPORT, np.random.default_rng(0), n=4, restyle=restyle)
  assert {v.kind for v in found} == set(variants.ERROR_TYPES)
  for v in found:
    assert v.text != positive
    assert variants.meaning(v.text) != variants.meaning(positive)
    same_length, changed = _differing_sentences(positive, v.text)
    if v.kind == "false_finding" and "added" in v.change:
      assert not same_length
    else:  # the finding's sentence in FINDINGS and in IMPRESSION, nothing else
      assert same_length and 1 <= changed <= 2, (positive, v.text)


# ---- Telegraphic shorthand -----------------------------------------------------------------------


@pytest.mark.parametrize("sentence, forms", [
    ("There is a small right pleural effusion.", {"Sm R pl eff."}),
    ("The heart is normal in size.", {"Heart nl size.", "Heart size nl.", "Heart nl in size."}),
    ("No pneumothorax is seen.", {"No PTX.", "No PTX seen."}),
    ("Pleural effusion is not identified.", {"No pl eff.", "Pl eff not seen."}),
    ("There is no evidence of pneumothorax.", {"No PTX."}),
    ("The cardiomediastinal silhouette is within normal limits.", {"CMS WNL."}),
    ("The lungs are clear.", {"Lungs clr."}),
    ("There are a few calcified granulomas.", {"A few calcified granulomas."}),  # "a few" is not "few"
    ("1. Moderate left pleural effusion with adjacent atelectasis.", {"1. Mod L pl eff w/ adjacent atx."}),
    ("Is there a pneumothorax?", {"Is there PTX?"}),
    ("The heart was enlarged on the prior study.", {"Heart was enl on prior study."}),  # tense kept
])
def test_telegraphic_sentences(sentence, forms):
  seen = {shorthand.telegraphic_sentence(sentence, seed) for seed in range(12)}
  assert seen == forms
  for form in forms:
    assert variants.meaning(form) == variants.meaning(sentence)


def test_telegraphic_report_is_deterministic_per_sentence():
  short = shorthand.telegraphic(REPORT, seed=5)
  assert short == shorthand.telegraphic(REPORT, seed=5)
  assert short.startswith("[FINDINGS] ") and " [IMPRESSION] " in short
  # A sentence is rewritten the same way in any report: the basis of restyled hard negatives.
  assert shorthand.telegraphic("No pneumothorax is seen. Lungs are clear.", 7).split(". ")[0] == \
      shorthand.telegraphic("No pneumothorax is seen.", 7).rstrip(".")
  assert len({shorthand.telegraphic("No pneumothorax is seen. The heart is normal in size.", s)
              for s in range(20)}) > 2


def test_telegraphic_falls_back_when_labels_change(monkeypatch):
  # A rewrite the labeler reads differently is not used: that sentence is only abbreviated.
  monkeypatch.setattr(shorthand, "meaning", lambda text: reports.expand(text).lower().startswith("there"))
  shorthand.telegraphic_sentence.cache_clear()
  try:
    assert shorthand.telegraphic("There is a small right pleural effusion.") == "There is a sm R pl eff."
  finally:
    shorthand.telegraphic_sentence.cache_clear()


def test_telegraphic_real_reports(asset):
  from data_pipelines import demo
  studies = demo.demo_studies(asset("iu_reports"))[::40]
  rewritten = 0
  for i, study in enumerate(studies):
    text = study.report.tagged()
    short = shorthand.telegraphic(text, i)
    assert short is not None and variants.meaning(short) == variants.meaning(text)
    assert reports.from_tagged(short).impression.strip() != "" or not study.report.impression
    rewritten += len(short) < len(reports.abbreviate(text))  # shorter than the abbreviation alone
  assert rewritten > len(studies) // 2
