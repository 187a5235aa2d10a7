"""The rule-based finding extractor on hand-written sentences."""
import numpy as np
import pytest

from data_pipelines import labels


@pytest.mark.parametrize("text, expected", [
    # Negation, including cues carried along a list and pseudo-negations that are not negations.
    ("No pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    ("There is no evidence of pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    ("No pneumothorax, pleural effusion, or focal consolidation.",
     {"Pneumothorax": 0, "Pleural Effusion": 0, "Consolidation": 0, "No Finding": 1}),
    ("The left pleural effusion has resolved.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("Pneumothorax is not seen.", {"Pneumothorax": 0, "No Finding": 1}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),
    ("No effusion with stable cardiomegaly.", {"Pleural Effusion": 0, "Cardiomegaly": 1}),
    ("Lungs are clear without focal airspace disease.", {"Lung Opacity": 0, "No Finding": 1}),
    # Uncertainty.
    ("Cannot exclude pneumothorax.", {"Pneumothorax": -1}),
    ("Pneumothorax cannot be excluded.", {"Pneumothorax": -1}),
    ("Possible small left pleural effusion.", {"Pleural Effusion": -1}),
    ("Atelectasis or pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Opacity in the right lower lobe may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    # Heart and mediastinum: the predicate decides.
    ("Heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Heart size is upper limits of normal.", {"Cardiomegaly": -1}),
    ("Normal cardiomediastinal silhouette.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
    # Other observations.
    ("Moderate pulmonary edema.", {"Edema": 1}),
    ("Right upper lobe mass.", {"Lung Lesion": 1}),
    ("Old healed right rib fractures.", {"Fracture": 1}),
    ("Right apical pleural thickening.", {"Pleural Other": 1}),
    ("Small pericardial effusion.", {}),
    # Support devices do not stop "No Finding"; other abnormalities (granuloma, emphysema) do.
    ("Left chest wall pacemaker. No acute disease.", {"Support Devices": 1, "No Finding": 1}),
    ("Calcified granuloma.", {}),
    ("Emphysema.", {}),
    ("", {}),
])
def test_labels(text, expected):
  assert labels.extract(text).labels == expected


@pytest.mark.parametrize("text, finding, side, severity", [
    ("Small left pleural effusion.", "Pleural Effusion", "left", "small"),
    ("Large right pneumothorax.", "Pneumothorax", "right", "large"),
    ("Moderate bilateral pleural effusions.", "Pleural Effusion", "bilateral", "moderate"),
    ("Pleural effusions, left greater than right.", "Pleural Effusion", "bilateral", None),
    ("Small pleural effusions.", "Pleural Effusion", "bilateral", "small"),  # plural, no side stated
    ("Effusion on the right.", "Pleural Effusion", "right", None),
    ("Left lung is clear; right effusion.", "Pleural Effusion", "right", None),
    ("Right lower lobe pneumonia and effusion.", "Pleural Effusion", "right", None),
    ("Bibasilar atelectasis.", "Atelectasis", "bilateral", None),
    ("Minimal LLL atelectasis.", "Atelectasis", "left", "small"),
    ("Severe cardiomegaly.", "Cardiomegaly", None, "severe"),
    ("The heart is large.", "Cardiomegaly", None, None),  # the predicate is not a grade
    ("Mild pulmonary edema.", "Edema", None, "mild"),
])
def test_laterality_and_severity(text, finding, side, severity):
  found = labels.extract(text)
  assert found.labels[finding] == 1
  assert found.laterality.get(finding) == side
  assert found.severity.get(finding) == severity


def test_zone_and_details():
  found = labels.extract("Right upper lobe consolidation. Calcified granulomas. Right IJ central line. Hyperinflated lungs.")
  assert found.zone["Consolidation"] == "upper"
  assert found.details == {"Granuloma": 1, "Central Line": 1, "Hyperinflation": 1}
  assert found.laterality["Central Line"] == "right"
  assert found.positive("Granuloma") and found.positive("Consolidation") and not found.positive("Edema")


def test_aggregation_positive_beats_uncertain_beats_negative():
  assert labels.extract("No effusion on the left. Possible right effusion.").labels == {"Pleural Effusion": -1}
  assert labels.extract("Possible effusion. Small right effusion.").labels == {"Pleural Effusion": 1}


def test_sections_tags_end_sentences():
  found = labels.extract("[FINDINGS] Small left effusion [IMPRESSION] No pneumothorax")
  assert found.labels == {"Pleural Effusion": 1, "Pneumothorax": 0}


def test_mentions_have_spans():
  text = "Heart normal. Small left pleural effusion."
  (mention,) = [m for m in labels.mentions(text) if m.finding == "Pleural Effusion"]
  assert text[mention.start:mention.end] == "pleural effusion"
  assert text[slice(*mention.sentence)].strip() == "Small left pleural effusion."


def test_label_vector():
  vector = labels.label_vector("Small left pleural effusion. Possible pneumonia. No pneumothorax.")
  assert vector.dtype == np.int8 and vector.shape == (14,)
  expected = np.zeros(14, np.int8)
  expected[labels.FINDINGS.index("Pleural Effusion")] = 1
  expected[labels.FINDINGS.index("Pneumonia")] = -1
  np.testing.assert_array_equal(vector, expected)
  assert labels.label_vector("Normal chest.")[0] == 1
  assert len(labels.FINDINGS) == 14 and labels.FINDINGS[0] == "No Finding"
