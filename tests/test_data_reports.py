"""Report decoding, cleaning, per-source section parsing, the tagged format and augmentation."""
import math

import numpy as np
import pytest

from data_pipelines import reports

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough, eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax.  Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

IU_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR77"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old with chest pain</AbstractText>
            <AbstractText Label="FINDINGS">Heart size normal.   The costophrenic XXXX XXXX are sharp.</AbstractText>
            <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <parentImage id="CXR77_1_IM-0001-1001"><figureId>F1</figureId></parentImage>
   <parentImage id="CXR77_1_IM-0001-2001"><figureId>F2</figureId></parentImage>
</eCitation>
"""


class TestDecodeAndClean:

  def test_utf8_and_bom(self):
    assert reports.decode_text("effusión".encode()) == "effusión"
    assert reports.decode_text(b"\xef\xbb\xbfclear") == "clear"
    assert reports.decode_text("clear".encode("utf-16")) == "clear"

  def test_non_utf8_bytes_never_raise(self):
    # Latin-1 Spanish keeps its word; a byte undefined in cp1252 becomes U+FFFD, which clean drops.
    assert reports.decode_text(b"derrame peque\xf1o") == "derrame pequeño"
    assert reports.decode_text(b"ok \x81 ok") == "ok \ufffd ok"
    assert reports.clean(reports.decode_text(b"ok \x81 ok \xff")) == "ok ok ÿ"

  def test_placeholders_normalized(self):
    assert reports.clean("Normal chest x-XXXX.") == "Normal chest x-___."
    assert reports.clean("The XXXX XXXX are sharp") == "The ___ are sharp"
    assert reports.clean("___ ___ and [**Hospital 12**] seen") == "___ and ___ seen"
    assert reports.clean("XXL and Xray untouched") == "XXL and Xray untouched"

  def test_whitespace_and_control(self):
    assert reports.clean("  Heart\tsize \n normal .\x00 Lungs clear ,ok ") == "Heart size normal. Lungs clear,ok"


class TestParsers:

  def test_mimic_sections(self):
    report = reports.parse_mimic(MIMIC)
    assert report.findings.startswith("The lungs are clear without focal consolidation. No pleural effusion or pneumothorax.")
    assert report.impression == "No acute cardiopulmonary process."
    assert report.sections["INDICATION"] == "___F with cough, eval for pneumonia"
    assert report.sections["COMPARISON"] == "___"
    assert "FINAL REPORT" not in " ".join(report.sections.values())

  def test_mimic_aliases_and_inline_headers(self):
    report = reports.parse_mimic("HISTORY: fever. FINDINGS: Left effusion. CONCLUSION: Small left effusion.")
    assert report == reports.Report("Left effusion.", "Small left effusion.", {"HISTORY": "fever."})
    assert reports.parse_mimic("FINDINGS AND IMPRESSION:\nNo acute process.").impression == "No acute process."

  def test_mimic_last_paragraph_fallback(self):
    text = "INDICATION: cough\n\nPA and lateral views.\n\nNo acute cardiopulmonary process."
    assert reports.parse_mimic(text).impression == "No acute cardiopulmonary process."
    assert reports.parse_mimic("No headers at all.\n\nLungs are clear.").impression == "Lungs are clear."

  def test_mimic_without_clinical_text_is_empty(self):
    assert reports.parse_mimic("INDICATION: cough\n\nCOMPARISON: none").is_empty()
    assert reports.parse_mimic("").is_empty()

  def test_iu_xml(self):
    report, meta = reports.parse_iu_xml(IU_XML)
    assert meta == {"uid": "CXR77", "image_ids": ["CXR77_1_IM-0001-1001", "CXR77_1_IM-0001-2001"]}
    assert report.findings == "Heart size normal. The costophrenic ___ are sharp."
    assert report.impression == "Normal chest x-___."
    assert report.sections == {"COMPARISON": "None.", "INDICATION": "___-year-old with chest pain"}

  def test_iu_xml_with_non_utf8_bytes(self):
    report, meta = reports.parse_iu_xml(IU_XML.replace(b"Heart size", b"H\xe9art size"))
    assert meta["uid"] == "CXR77"
    assert report.findings.startswith("Héart size normal.")

  @pytest.mark.parametrize("data, message", [(b"<eCitation><uId", "malformed IU XML"),
                                              (b"<eCitation></eCitation>", "no <uId")])
  def test_iu_xml_errors_are_one_line(self, data, message):
    with pytest.raises(ValueError, match=message) as e:
      reports.parse_iu_xml(data)
    assert "\n" not in str(e.value)

  def test_chexpert_plus(self):
    row = {"path_to_image": "train/patient1/study1/view1_frontal.jpg", "report": "ignored",
           "section_findings": "Small left effusion. ", "section_impression": "Left effusion.",
           "section_clinical_history": "Dyspnea.", "section_comparison": math.nan, "section_summary": None}
    report = reports.parse_chexpert_plus(row)
    assert report == reports.Report("Small left effusion.", "Left effusion.", {"CLINICAL_HISTORY": "Dyspnea."})

  def test_chexpert_plus_falls_back_to_report_text(self):
    row = {"report": "NARRATIVE: CHEST\n\nFINDINGS: Clear lungs.\n\nIMPRESSION: Normal.",
           "section_findings": math.nan, "section_impression": ""}
    report = reports.parse_chexpert_plus(row)
    assert (report.findings, report.impression) == ("Clear lungs.", "Normal.")

  def test_padchest_spanish_kept(self):
    row = {"ImageID": "x.png", "Report": " derrame pleural izquierdo pequeño .  cardiomegalia"}
    assert reports.parse_padchest(row).findings == "derrame pleural izquierdo pequeño. cardiomegalia"
    assert reports.parse_padchest({"Report": math.nan}).is_empty()


class TestTagged:

  def test_text_and_tagged(self):
    report = reports.Report("Heart normal.", "No acute disease.")
    assert report.text() == "Heart normal. No acute disease."
    assert report.tagged() == "[FINDINGS] Heart normal. [IMPRESSION] No acute disease."
    assert reports.Report(impression="Normal.").tagged() == "[IMPRESSION] Normal."
    assert reports.Report(impression="Normal.").text() == "Normal."
    assert reports.Report(findings="  ").is_empty()

  def test_round_trip_and_plain(self):
    report = reports.Report("Heart normal.", "No acute disease.")
    assert reports.from_tagged(report.tagged()) == report
    assert reports.from_tagged("just text") == reports.Report(impression="just text")
    assert reports.from_tagged("[INDICATION] cough [IMPRESSION] Normal.").sections == {"INDICATION": "cough"}


class TestSentencesAndAbbreviations:

  def test_split_sentences(self):
    text = "1. Small effusion vs. atelectasis. 2. Nodule measures 1.5 cm. No pneumothorax!"
    assert reports.split_sentences(text) == ["1. Small effusion vs. atelectasis.", "2. Nodule measures 1.5 cm.",
                                             "No pneumothorax!"]

  def test_swap_both_directions(self):
    text = "PTX is small. Left PTX. Status post CABG w/o change. CP angles sharp. Costophrenic angle blunted."
    assert reports.swap_abbreviations(text) == ("Pneumothorax is small. Left pneumothorax. S/p coronary artery bypass "
                                                "graft without change. Costophrenic angles sharp. CP angle blunted.")
    assert reports.swap_abbreviations("s/p right lower lobe pneumonia", direction="contract") == "s/p RLL pneumonia"
    assert reports.swap_abbreviations("s/p RLL pneumonia", direction="expand") == "status post right lower lobe pneumonia"

  def test_swap_leaves_words_containing_terms_alone(self):
    for text in ("PTXs", "ETTA", "Ett", "withdrawn", "stab/w", "w/ox"):
      assert reports.swap_abbreviations(text) == text

  def test_swap_probability_and_seed(self):
    text = " ".join(["PTX."] * 200)
    out = reports.swap_abbreviations(text, np.random.default_rng(0), p=0.3)
    assert 30 < out.count("neumothorax") < 90
    assert out == reports.swap_abbreviations(text, np.random.default_rng(0), p=0.3)

  def test_bad_direction(self):
    with pytest.raises(ValueError, match="direction"):
      reports.swap_abbreviations("PTX", direction="sideways")


class TestAugment:
  TAGGED = "[FINDINGS] A one. B two. C three. D four. [IMPRESSION] E five. F six. G seven."

  def test_deterministic(self):
    outs = [reports.augment(self.TAGGED, np.random.default_rng(3), shuffle_p=0.5, abbrev_p=0.5, drop_section_p=0.5)
            for _ in range(2)]
    assert outs[0] == outs[1]

  def test_shuffle_is_section_aware(self):
    seen = set()
    for seed in range(30):
      out = reports.from_tagged(reports.augment(self.TAGGED, np.random.default_rng(seed), shuffle_p=1.0))
      assert sorted(reports.split_sentences(out.findings)) == ["A one.", "B two.", "C three.", "D four."]
      assert sorted(reports.split_sentences(out.impression)) == ["E five.", "F six.", "G seven."]
      seen.add(out.findings)
    assert len(seen) > 10

  def test_nothing_when_probabilities_are_zero(self):
    assert reports.augment(self.TAGGED, np.random.default_rng(0), shuffle_p=0.0) == self.TAGGED

  def test_drop_section(self):
    kinds = set()
    for seed in range(20):
      out = reports.from_tagged(reports.augment(self.TAGGED, np.random.default_rng(seed), shuffle_p=0, drop_section_p=1.0))
      assert bool(out.findings) != bool(out.impression)
      kinds.add("findings" if out.findings else "impression")
    assert kinds == {"findings", "impression"}

  def test_plain_text(self):
    out = reports.augment("No PTX. Heart normal. Lungs clear.", np.random.default_rng(1), shuffle_p=1.0, abbrev_p=1.0,
                          drop_section_p=1.0)
    assert sorted(reports.split_sentences(out)) == ["Heart normal.", "Lungs clear.", "No pneumothorax."]


class TestLexicon:

  def test_size_and_bijection(self):
    table = reports.ABBREVIATIONS
    assert len(table) >= 200
    abbreviations = [reports._key(a) for a, _ in table]
    expansions = [reports._key(e) for _, e in table]
    assert len(set(abbreviations)) == len(table), "an abbreviation with two expansions"
    assert len(set(expansions)) == len(table), "an expansion with two abbreviations"
    assert not set(abbreviations) & set(expansions), "a term that is both an abbreviation and an expansion"
    assert set(reports.ACRONYMS).isdisjoint(reports.SHORTHAND)

  def test_phrases_agree_with_their_words(self):
    # "pl eff" must expand as "pl" and "eff" do, or contracting word by word would change it.
    words = {reports._key(a): reports._key(e) for a, e in reports.ABBREVIATIONS}
    for abbr, expansion in reports.ABBREVIATIONS:
      parts = reports._key(abbr).split()
      if len(parts) > 1 and all(p in words for p in parts):
        assert " ".join(words[p] for p in parts) == reports._key(expansion), abbr

  @pytest.mark.parametrize("text, short", [
      ("There is a small right pleural effusion.", "There is a sm R pl eff."),
      ("Moderate left pleural effusions with bibasilar atelectasis.", "Mod L pl effs w/ bibas atx."),
      ("Heart size normal. No pneumothorax.", "Heart size nl. No PTX."),
      ("The cardiomediastinal silhouette is within normal limits.", "The CMS is WNL."),
      ("Status post coronary artery bypass graft with no interval change.", "S/p CABG w/ NIC."),
      ("Large right lower lobe consolidation, unchanged.", "Lg RLL consol, unchg."),
      ("Posteroanterior and lateral views of the chest.", "PA and lat views of the chest."),
      ("Increased anteroposterior diameter.", "Incr AP diameter."),
      ("Right internal jugular catheter tip in the superior vena cava.", "RIJ catheter tip in the SVC."),
      ("Elevated left hemidiaphragm, history of pneumonia.", "Elev L hemidiaph, h/o PNA."),
      ("Small left costophrenic angle blunting.", "Sm L CP angle blunting."),
  ])
  def test_round_trip(self, text, short):
    assert reports.abbreviate(text) == short
    assert reports.expand(short) == text
    assert reports.abbreviate(reports.expand(short)) == short

  def test_existing_abbreviations_are_made_canonical(self):
    assert reports.abbreviate("Right IJ line; no ptx.") == "RIJ line; no PTX."
    assert reports.expand("R PTX. s/p PICC. (Sm L eff)") == (
        "Right pneumothorax. status post peripherally inserted central catheter. (Small left effusion)")

  @pytest.mark.parametrize("text", [
      "L1 vertebra and L5-S1 disc.", "T4-L1 fusion.", "Left in place.", "Right and left lungs.",
      "right-sided arch", "The model is modest and smaller.", "Smooth margins.", "Latissimus", "Antero",
      "main PA enlarged", "PE", "CT", "1 cm", "HD catheter", "PT and MOD", "Ett", "sob", "Grade A, type L",
  ])
  def test_no_false_matches(self, text):
    # Single letters, ambiguous shorthand and words that contain an abbreviation stay as they are.
    assert reports.expand(text) == text
    assert reports.swap_abbreviations(text, direction="expand", lexicon="all") == text

  def test_context_rules(self):
    assert reports.expand("the AP window") == "the aortopulmonary window"  # its own entry, not "anteroposterior"
    assert reports.expand("R/O PNA") == "Rule out pneumonia"
    assert reports.expand("L lung, R base, L PICC") == (
        "Left lung, right base, left peripherally inserted central catheter")
    assert reports.abbreviate("left upper extremity; right heart border") == "L upper extremity; R heart border"
    assert reports.abbreviate("The tube was left in the right chest.") == "The tube was left in the R chest."

  def test_lexicons(self):
    text = "Small left PTX."
    assert reports.swap_abbreviations(text) == "Small left pneumothorax."  # default: acronyms only
    assert reports.swap_abbreviations(text, lexicon="shorthand") == "Sm L PTX."
    assert reports.swap_abbreviations(text, lexicon="all") == "Sm L pneumothorax."
    with pytest.raises(ValueError, match="unknown abbreviation lexicon"):
      reports.swap_abbreviations(text, lexicon="slang")

  def test_real_reports_round_trip(self, asset):
    from data_pipelines import demo, labels
    for study in demo.demo_studies(asset("iu_reports"))[::25]:
      text = study.report.tagged()
      short = reports.abbreviate(text)
      assert reports.abbreviate(reports.expand(short)) == short
      assert labels.extract(reports.expand(short)) == labels.extract(reports.expand(text))
