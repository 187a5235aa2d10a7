"""Radiology report text: decoding, cleaning, section parsing per source, the tagged format, augmentation.

Every source is reduced to one `Report` (findings, impression, other labelled sections). The tagged
form `[FINDINGS] … [IMPRESSION] …` is what the paper's CLIP stage reads; `Report.text()` is the plain
form used when sections are not wanted. De-identification placeholders differ per source (MIMIC's
`___`, IU's `XXXX`, older `[**…**]` brackets); `clean` maps all of them to one token, `PLACEHOLDER`,
so the encoder never learns which dataset a report came from by its redaction style.

Augmentations take an explicit `np.random.Generator` and nothing else random, so a pipeline seeded per
record is reproducible.
"""
from __future__ import annotations

import codecs
import dataclasses
import functools
import re
import xml.etree.ElementTree as ET
from typing import Mapping

import numpy as np

PLACEHOLDER = "___"
FINDINGS = "FINDINGS"
IMPRESSION = "IMPRESSION"


def _latin_fallback(err: UnicodeDecodeError) -> tuple[str, int]:
  # Bytes that are not UTF-8 are most often cp1252/Latin-1 text (e.g. Spanish "pequeño"); reading
  # them as such keeps the word. The five bytes cp1252 leaves undefined become U+FFFD.
  return err.object[err.start:err.end].decode("cp1252", errors="replace"), err.end


codecs.register_error("cxr_latin_fallback", _latin_fallback)


def decode_text(data: bytes) -> str:
  """Bytes -> str. UTF-8 (BOM dropped); stray non-UTF-8 bytes read as cp1252; never raises."""
  if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    return data.decode("utf-16", errors="replace")
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8):]
  return data.decode("utf-8", errors="cxr_latin_fallback")


# IU writes XXXX (also inside words: "x-XXXX"), MIMIC ___, MIMIC-II style [**Name 12**].
_DEID = re.compile(r"(?<![A-Za-z])X{3,}(?![A-Za-z])|_{2,}|\[\*\*[^\]]{0,80}\*\*\]")
_DEID_RUN = re.compile(re.escape(PLACEHOLDER) + r"(?:[ \t-]+" + re.escape(PLACEHOLDER) + r")+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def clean(text: str) -> str:
  """One line: de-id placeholders unified (a run of them is one), whitespace collapsed."""
  text = _CONTROL.sub(" ", text).replace("\ufffd", "")
  text = _DEID_RUN.sub(PLACEHOLDER, _DEID.sub(PLACEHOLDER, text))
  text = " ".join(text.split())
  return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


@dataclasses.dataclass(frozen=True)
class Report:
  """A report reduced to its two clinical sections plus any other labelled sections (cleaned)."""
  findings: str = ""
  impression: str = ""
  sections: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def text(self) -> str:
    """Plain "findings impression"; whichever exists when one is missing."""
    return clean(" ".join(s for s in (self.findings, self.impression) if s))

  def tagged(self) -> str:
    parts = [f"[{tag}] {clean(body)}" for tag, body in ((FINDINGS, self.findings),
                                                       (IMPRESSION, self.impression)) if body.strip()]
    return " ".join(parts)

  def is_empty(self) -> bool:
    return not (self.findings.strip() or self.impression.strip())


def _make(sections: dict[str, str]) -> Report:
  sections = {k: clean(v) for k, v in sections.items()}
  sections = {k: v for k, v in sections.items() if v}
  return Report(findings=sections.pop(FINDINGS, ""), impression=sections.pop(IMPRESSION, ""),
                sections=sections)


# ---- MIMIC-CXR (and other free text with "NAME:" headers) ----------------------------------------

# Section names seen in MIMIC-CXR / CheXpert Plus free text, mapped as the MIMIC-CXR section parser
# (mimic-cxr/txt/section_parser.py) does for the two sections we use.
_ALIASES = {
    "FINDING": FINDINGS, "FINDINGS": FINDINGS,
    "IMPRESSION": IMPRESSION, "IMPRESSIONS": IMPRESSION, "CONCLUSION": IMPRESSION,
    "CONCLUSIONS": IMPRESSION, "FINDINGS AND IMPRESSION": IMPRESSION,
    "FINDINGS/IMPRESSION": IMPRESSION, "IMPRESSION AND FINDINGS": IMPRESSION, "OPINION": IMPRESSION,
    "INDICATIONS": "INDICATION", "HISTORY/INDICATION": "INDICATION", "CLINICAL INDICATION": "INDICATION",
    "REASON FOR EXAM": "INDICATION", "REASON FOR EXAMINATION": "INDICATION",
    "COMPARISONS": "COMPARISON", "COMPARISON EXAM": "COMPARISON", "COMPARISON STUDY": "COMPARISON",
}
# Sections whose text is never a finding or an impression, so the last-paragraph fallback skips them.
_NON_CLINICAL = {"INDICATION", "HISTORY", "CLINICAL HISTORY", "COMPARISON", "TECHNIQUE", "EXAMINATION",
                 "EXAM", "NOTIFICATION", "PROCEDURE", "DATE", "TYPE OF EXAMINATION", "REFERENCE EXAM",
                 "PATIENT HISTORY", "CLINICAL INFORMATION", "RECOMMENDATION", "RECOMMENDATIONS",
                 "RECOMMENDATION(S)", "WET READ", "NARRATIVE", "ACCESSION NUMBER", "SUMMARY"}
_KNOWN = set(_ALIASES) | set(_ALIASES.values()) | _NON_CLINICAL
# A known name anywhere after whitespace ("... FINDINGS: ..."), or any all-caps name at a line start.
_KNOWN_HEADER = re.compile(r"(?:^|(?<=\s))(" + "|".join(re.escape(n) for n in sorted(_KNOWN, key=len, reverse=True))
                           + r")[ \t]*:")
_CAPS_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/()-]{1,48}?)[ \t]*:", re.M)
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
_FINAL_REPORT = re.compile(r"^\s*FINAL REPORT\s*$", re.M)


def _headers(text: str) -> list[tuple[int, int, str]]:
  found = [(m.start(1), m.end(), m.group(1)) for m in _KNOWN_HEADER.finditer(text)]
  found += [(m.start(1), m.end(), m.group(1)) for m in _CAPS_HEADER.finditer(text)]
  headers: list[tuple[int, int, str]] = []
  for start, end, name in sorted(found, key=lambda h: (h[0], -h[1])):
    if not headers or start >= headers[-1][1]:  # Drop a header found inside a longer one.
      headers.append((start, end, name))
  return headers


def _section_name(raw: str) -> str:
  name = " ".join(raw.upper().split())
  return _ALIASES.get(name, name)


def parse_mimic(text: str) -> Report:
  """A free-text report with "NAME:" headers (MIMIC-CXR layout; CheXpert Plus `report` too).

  FINDINGS/IMPRESSION and their aliases fill the two fields; other sections are kept. Without either,
  the last paragraph is the impression (MIMIC-CXR's own fallback), unless it is a non-clinical section.
  """
  text = _FINAL_REPORT.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
  headers = _headers(text)
  sections: dict[str, str] = {}
  preamble = text[:headers[0][0]] if headers else text
  if preamble.strip():
    sections["PREAMBLE"] = preamble
  for i, (_, body_start, raw) in enumerate(headers):
    body_end = headers[i + 1][0] if i + 1 < len(headers) else len(text)
    name = _section_name(raw)
    sections[name] = (sections.get(name, "") + "\n" + text[body_start:body_end]).strip()
  report = _make(sections)
  if report.is_empty():
    paragraphs = [p for p in _PARAGRAPHS.split(text) if p.strip()]
    if paragraphs:
      last = paragraphs[-1]
      last_headers = _headers(last)
      name = _section_name(last_headers[0][2]) if last_headers and not last[:last_headers[0][0]].strip() else ""
      if name not in _NON_CLINICAL:
        body = last[last_headers[0][1]:] if name else last
        report = dataclasses.replace(report, impression=clean(body))
  return report


# ---- IU X-ray / Open-I XML -----------------------------------------------------------------------

_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")


def parse_iu_xml(data: bytes) -> tuple[Report, dict]:
  """One `ecgen-radiology/*.xml` file -> (Report, {"uid": "CXR1", "image_ids": [parentImage ids]}).

  Raises ValueError (one line) for XML that cannot be parsed or has no uId.
  """
  try:
    root = ET.fromstring(data)
  except ET.ParseError:
    # Bytes that are not valid in the declared encoding: decode leniently and parse the text.
    try:
      root = ET.fromstring(_XML_DECL.sub("", decode_text(data)))
    except ET.ParseError as e:
      raise ValueError(f"malformed IU XML: {e}") from None
  uid = root.find("uId")
  uid = uid.get("id", "").strip() if uid is not None else ""
  if not uid:
    raise ValueError("IU XML has no <uId id=...>")
  sections: dict[str, str] = {}
  for node in root.iter("AbstractText"):
    label = " ".join((node.get("Label") or "").upper().split())
    body = "".join(node.itertext())
    if label and body.strip():
      sections[label] = (sections.get(label, "") + " " + body).strip()
  image_ids = [n.get("id") for n in root.iter("parentImage") if n.get("id")]
  return _make(sections), {"uid": uid, "image_ids": image_ids}


# ---- CheXpert Plus and PadChest CSV rows ---------------------------------------------------------


def _cell(row: Mapping[str, object], key: str) -> str:
  """A CSV cell as text: missing, None and pandas' NaN are empty; bytes are decoded leniently."""
  value = row.get(key)
  if value is None or (isinstance(value, float) and value != value):
    return ""
  if isinstance(value, bytes):
    return decode_text(value)
  return str(value)


def parse_chexpert_plus(row: Mapping[str, str]) -> Report:
  """A CheXpert Plus report row: `section_findings`, `section_impression` and other `section_*`.

  Rows whose findings and impression columns are both empty fall back to the full `report` text.
  """
  sections = {k[len("section_"):].upper(): _cell(row, k) for k in row if k.startswith("section_")}
  report = _make(sections)
  if report.is_empty() and _cell(row, "report").strip():
    parsed = parse_mimic(_cell(row, "report"))
    report = dataclasses.replace(parsed, sections={**parsed.sections, **report.sections})
  return report


def parse_padchest(row: Mapping[str, str]) -> Report:
  """A PadChest row: its `Report` column (Spanish, unsectioned descriptive text) as findings."""
  return _make({FINDINGS: _cell(row, "Report")})


# ---- The tagged format ---------------------------------------------------------------------------

TAG = re.compile(r"\[([A-Z][A-Z _/()-]{0,40})\]")


def split_tagged(text: str) -> list[tuple[str | None, str]]:
  """"p [A] x [B] y" -> [(None, "p"), ("A", "x"), ("B", "y")]; untagged text -> [(None, text)]."""
  pieces = TAG.split(text)
  parts = [(None, pieces[0])] if pieces[0].strip() or len(pieces) == 1 else []
  parts += [(pieces[i], pieces[i + 1]) for i in range(1, len(pieces), 2)]
  return [(tag, body.strip()) for tag, body in parts]


def from_tagged(text: str) -> Report:
  """Inverse of `Report.tagged`. Untagged text is taken as an impression (text-only datasets)."""
  parts = split_tagged(text)
  if len(parts) == 1 and parts[0][0] is None:
    return _make({IMPRESSION: parts[0][1]})
  sections: dict[str, str] = {}
  for tag, body in parts:
    key = tag or "PREAMBLE"
    sections[key] = (sections.get(key, "") + " " + body).strip()
  return _make(sections)


# ---- Sentences and abbreviations -----------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST_MARKER = re.compile(r"\(?\d{1,2}[.)]")
_NO_BREAK_AFTER = ("dr.", "vs.", "approx.", "e.g.", "i.e.", "cf.", "no.", "st.")


def split_sentences(text: str) -> list[str]:
  """Sentences of one section; list markers ("1.") and "vs."-style abbreviations stay attached."""
  sentences: list[str] = []
  for piece in _SENTENCE_END.split(text.strip()):
    if not piece:
      continue
    if sentences and (_LIST_MARKER.fullmatch(sentences[-1]) or sentences[-1].lower().endswith(_NO_BREAK_AFTER)):
      sentences[-1] += " " + piece
    else:
      sentences.append(piece)
  return sentences


# ---- Abbreviations -------------------------------------------------------------------------------
#
# (abbreviation, expansion) pairs of real chest-radiograph shorthand. The table is a bijection: no
# abbreviation has two expansions and no expansion two abbreviations, so expand(contract(x)) says what
# x says. Abbreviations with two readings in chest X-ray text are left out, because a swap must never
# change the meaning: PE (pleural effusion / pulmonary embolism), CT (computed tomography / chest
# tube), HD (hemidiaphragm / hemodialysis), CP alone (costophrenic / chest pain), LAD
# (lymphadenopathy / left anterior descending), RA (right atrium / room air), CVA (cerebrovascular
# accident / costovertebral angle), PCP (Pneumocystis pneumonia / primary care physician), MAC (mitral
# annular calcification / Mycobacterium avium), ICD (defibrillator / intercostal drain), IV
# (intravenous / the numeral), PVC, ASD, US, ED, OR, cm (centimetre, never cardiomegaly), min (minimal
# / minimum), post (posterior / "status post"), port (portable / a chest port), cath (catheter /
# catheterization), pneumo (pneumothorax / pneumonia / pneumoperitoneum), rt (right / radiotherapy),
# ext, diff, calc, vert, abd, sx, tx. PA and AP swap only before a view word and R and L only before
# a lateral noun (`_CONTEXT`), in both directions, so that whatever is contracted expands back.
# Two tiers: ACRONYMS (what signed reports write; the default of `swap_abbreviations`, so augmenting
# a report keeps it a plausible signed report) and SHORTHAND (a quick note's word shortenings).

# Formal abbreviations: acronyms, slash forms and the few word forms that signed reports use.
ACRONYMS: tuple[tuple[str, str], ...] = (
    # Lobes and zones.
    ("RLL", "right lower lobe"), ("RML", "right middle lobe"), ("RUL", "right upper lobe"),
    ("LLL", "left lower lobe"), ("LUL", "left upper lobe"), ("RLZ", "right lower zone"),
    ("RMZ", "right mid zone"), ("RUZ", "right upper zone"), ("LLZ", "left lower zone"),
    ("LMZ", "left mid zone"), ("LUZ", "left upper zone"),
    # Anatomy.
    ("CP angles", "costophrenic angles"), ("CP angle", "costophrenic angle"),
    ("CMS", "cardiomediastinal silhouette"), ("AP window", "aortopulmonary window"),
    ("GEJ", "gastroesophageal junction"), ("CAJ", "cavoatrial junction"),
    ("SVC", "superior vena cava"), ("IVC", "inferior vena cava"), ("LV", "left ventricle"),
    ("RV", "right ventricle"), ("AC joints", "acromioclavicular joints"),
    ("AC joint", "acromioclavicular joint"), ("SC joints", "sternoclavicular joints"),
    ("SC joint", "sternoclavicular joint"), ("T-spine", "thoracic spine"), ("C-spine", "cervical spine"),
    ("L-spine", "lumbar spine"), ("RUQ", "right upper quadrant"), ("LUQ", "left upper quadrant"),
    ("RLQ", "right lower quadrant"), ("LLQ", "left lower quadrant"), ("GI", "gastrointestinal"),
    # Lines, tubes and devices.
    ("ETT", "endotracheal tube"), ("NGT", "nasogastric tube"), ("OGT", "orogastric tube"),
    ("DHT", "Dobhoff tube"), ("PICC", "peripherally inserted central catheter"),
    ("CVC", "central venous catheter"), ("CVL", "central venous line"), ("IJ", "internal jugular"),
    ("RIJ", "right internal jugular"), ("LIJ", "left internal jugular"), ("EJ", "external jugular"),
    ("PPM", "permanent pacemaker"), ("AICD", "automatic implantable cardioverter-defibrillator"),
    ("IABP", "intra-aortic balloon pump"), ("ECMO", "extracorporeal membrane oxygenation"),
    ("LVAD", "left ventricular assist device"), ("VP shunt", "ventriculoperitoneal shunt"),
    ("PEG", "percutaneous endoscopic gastrostomy"), ("ECG", "electrocardiogram"),
    ("CPAP", "continuous positive airway pressure"), ("PEEP", "positive end-expiratory pressure"),
    # Procedures and studies.
    ("CABG", "coronary artery bypass graft"), ("AVR", "aortic valve replacement"),
    ("MVR", "mitral valve replacement"), ("TAVR", "transcatheter aortic valve replacement"),
    ("VATS", "video-assisted thoracoscopic surgery"), ("ORIF", "open reduction internal fixation"),
    ("ACDF", "anterior cervical discectomy and fusion"), ("PCI", "percutaneous coronary intervention"),
    ("XRT", "radiation therapy"), ("BAL", "bronchoalveolar lavage"), ("EBUS", "endobronchial ultrasound"),
    ("TTE", "transthoracic echocardiogram"), ("TEE", "transesophageal echocardiogram"),
    ("MRI", "magnetic resonance imaging"), ("PET", "positron emission tomography"),
    ("CXR", "chest radiograph"),
    # Findings and diseases.
    ("PTX", "pneumothorax"), ("GGOs", "ground-glass opacities"), ("GGO", "ground-glass opacity"),
    ("VAP", "ventilator-associated pneumonia"), ("CHF", "congestive heart failure"),
    ("HF", "heart failure"), ("COPD", "chronic obstructive pulmonary disease"),
    ("ARDS", "acute respiratory distress syndrome"), ("RDS", "respiratory distress syndrome"),
    ("ILD", "interstitial lung disease"), ("IPF", "idiopathic pulmonary fibrosis"),
    ("UIP", "usual interstitial pneumonia"), ("NSIP", "nonspecific interstitial pneumonia"),
    ("COP", "cryptogenic organizing pneumonia"), ("TB", "tuberculosis"),
    ("NTM", "nontuberculous mycobacteria"), ("CF", "cystic fibrosis"),
    ("AVM", "arteriovenous malformation"), ("SPN", "solitary pulmonary nodule"), ("LNs", "lymph nodes"),
    ("LN", "lymph node"), ("NSCLC", "non-small cell lung cancer"), ("SCLC", "small cell lung cancer"),
    ("SCC", "squamous cell carcinoma"), ("AAA", "abdominal aortic aneurysm"),
    ("TAA", "thoracic aortic aneurysm"), ("DJD", "degenerative joint disease"),
    ("DDD", "degenerative disc disease"), ("OA", "osteoarthritis"), ("CAD", "coronary artery disease"),
    ("HTN", "hypertension"), ("PAH", "pulmonary arterial hypertension"), ("MI", "myocardial infarction"),
    ("AFib", "atrial fibrillation"), ("VSD", "ventricular septal defect"),
    ("PDA", "patent ductus arteriosus"), ("TOF", "tetralogy of Fallot"), ("DM", "diabetes mellitus"),
    ("CKD", "chronic kidney disease"), ("ESRD", "end-stage renal disease"),
    ("SLE", "systemic lupus erythematosus"), ("GERD", "gastroesophageal reflux disease"),
    ("SBO", "small bowel obstruction"), ("URI", "upper respiratory infection"),
    # Clinical context.
    ("SOB", "shortness of breath"), ("DOE", "dyspnea on exertion"), ("MVC", "motor vehicle collision"),
    ("MVA", "motor vehicle accident"), ("GSW", "gunshot wound"), ("ICU", "intensive care unit"),
    ("OSH", "outside hospital"),
    # Conclusions.
    ("NAD", "no acute disease"), ("NACPD", "no acute cardiopulmonary disease"),
    ("NACPP", "no acute cardiopulmonary process"), ("NIC", "no interval change"),
    ("WNL", "within normal limits"),
    # Slash forms and the word forms signed reports use.
    ("s/p", "status post"), ("w/o", "without"), ("w/", "with"), ("c/w", "consistent with"),
    ("b/l", "bilateral"), ("r/o", "rule out"), ("h/o", "history of"), ("f/u", "follow-up"),
    ("y/o", "year-old"), ("hx", "history"), ("fx", "fracture"), ("fxs", "fractures"), ("dx", "diagnosis"),
    ("ddx", "differential diagnosis"), ("bx", "biopsy"),
)

# Telegraphic shorthand: the word shortenings and note-style forms of a radiologist's quick note
# ("Sm R pl eff, no PTX", "d/t", "PNA").
SHORTHAND: tuple[tuple[str, str], ...] = (
    ("R", "right"), ("L", "left"), ("bibas", "bibasilar"), ("AP", "anteroposterior"),
    ("PA", "posteroanterior"), ("lat", "lateral"), ("ant", "anterior"), ("obl", "oblique"),
    ("decub", "decubitus"), ("proj", "projection"),
    ("sm", "small"), ("lg", "large"), ("mod", "moderate"), ("enl", "enlarged"), ("prom", "prominent"),
    ("elev", "elevated"), ("mult", "multiple"), ("signif", "significant"), ("assoc", "associated"),
    ("pl effs", "pleural effusions"), ("pl eff", "pleural effusion"), ("pl", "pleural"),
    ("effs", "effusions"), ("eff", "effusion"), ("atx", "atelectasis"), ("consol", "consolidation"),
    ("opacs", "opacities"), ("opac", "opacity"), ("infilts", "infiltrates"), ("infilt", "infiltrate"),
    ("cong", "congestion"), ("mets", "metastases"), ("calcifs", "calcifications"),
    ("calcif", "calcification"), ("hyperinfl", "hyperinflation"), ("subseg", "subsegmental"),
    ("retic", "reticular"), ("periph", "peripheral"), ("degen", "degenerative"), ("dz", "disease"),
    ("nl", "normal"), ("abnl", "abnormal"), ("clr", "clear"), ("unchg", "unchanged"), ("chg", "change"),
    ("incr", "increased"), ("decr", "decreased"), ("intvl", "interval"), ("prev", "previous"),
    ("neg", "negative"), ("pos", "positive"),
    ("PNA", "pneumonia"), ("w/in", "within"), ("b/w", "between"), ("d/t", "due to"),
    ("r/t", "related to"), ("c/o", "complains of"), ("w/u", "workup"),
    ("pulm", "pulmonary"), ("vasc", "vascular"), ("mediast", "mediastinal"),
    ("cardiopulm", "cardiopulmonary"), ("resp", "respiratory"), ("hemidiaph", "hemidiaphragm"),
    ("subcut", "subcutaneous"), ("subclav", "subclavian"), ("clav", "clavicle"), ("trach", "tracheostomy"),
    ("vols", "volumes"), ("vol", "volume"), ("surg", "surgical"), ("chemo", "chemotherapy"),
    ("post-op", "postoperative"), ("pre-op", "preoperative"), ("exam", "examination"),
    ("eval", "evaluation"), ("pts", "patients"), ("pt", "patient"), ("esp", "especially"),
    ("wks", "weeks"), ("wk", "week"), ("mos", "months"), ("yrs", "years"), ("yr", "year"), ("hrs", "hours"),
)
ABBREVIATIONS = ACRONYMS + SHORTHAND
LEXICONS = {"acronyms": ACRONYMS, "shorthand": SHORTHAND, "all": ABBREVIATIONS}

# Acronyms radiologists also type in lower case ("no ptx"); the rest must be written in capitals, so
# that "Ett" or "sob" in prose is never expanded. Contraction always writes the capitals.
_LOWERCASE_OK = frozenset({
    "PTX", "CHF", "COPD", "ETT", "NGT", "OGT", "PICC", "SVC", "IVC", "CABG", "GGO", "GGOs", "ILD", "IPF",
    "ARDS", "AICD", "DJD", "PNA", "RLL", "RML", "RUL", "LLL", "LUL", "CXR", "WNL", "HTN", "CKD", "ESRD"})
# Abbreviations (and so their expansions) that swap only before one of these words (or its
# counterpart, see `_context_pattern`): "R pl eff", "L lung", "PA and lat", "AP view". Elsewhere a
# capital letter or "PA" may mean anything else ("L1", "main PA", "AP window" is its own entry).
_LATERAL_NOUNS = (
    "lung", "base", "apex", "hemithorax", "hemidiaphragm", "diaphragm", "pleural", "pleura", "effusion",
    "effusions", "pneumothorax", "atelectasis", "consolidation", "opacity", "opacities", "infiltrate",
    "upper", "middle", "mid", "lower", "basilar", "basal", "apical", "perihilar", "hilar", "hilum",
    "infrahilar", "paratracheal", "costophrenic", "internal", "external", "subclavian", "jugular",
    "femoral", "chest", "rib", "ribs", "clavicle", "shoulder", "axilla", "axillary", "breast", "mastectomy",
    "heart", "atrium", "atrial", "ventricle", "ventricular", "main", "mainstem", "bronchus", "anterior",
    "posterior", "lateral", "side", "nodule", "mass", "granuloma", "fracture", "arm", "neck", "PICC")
_VIEW_WORDS = ("view", "views", "and lateral", "projection", "radiograph", "chest", "film", "image",
               "upright", "supine", "erect", "portable")
_CONTEXT = {"R": _LATERAL_NOUNS, "L": _LATERAL_NOUNS, "PA": _VIEW_WORDS, "AP": _VIEW_WORDS + ("diameter",)}


def _key(text: str) -> str:
  return " ".join(re.split(r"[\s-]+", text.lower()))


def _abbr_pattern(abbr: str) -> str:
  # Lowercase abbreviations also match a capitalized first letter ("Sm" at a sentence start) and,
  # for slash forms, all capitals ("S/P"); "MOD" or "PT" in capitals may be something else.
  forms = {abbr}
  if abbr.islower():
    forms |= {abbr[0].upper() + abbr[1:]} | ({abbr.upper()} if "/" in abbr else set())
  elif abbr in _LOWERCASE_OK:
    forms.add(abbr.lower())
  return "(?:" + "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in sorted(forms)) + ")"


def _expansion_pattern(expansion: str) -> str:
  return "(?i:" + r"[\s-]+".join(re.escape(w) for w in re.split(r"[ -]", expansion)) + ")"


def _context_pattern(phrases: tuple[str, ...]) -> str:
  """A lookahead for "one of `phrases` follows", where each word may also be written as its table
  counterpart's first word ("pleural" or "pl", "costophrenic" or "CP"), since the next term is
  swapped in the same pass."""
  first_words: dict[str, set[str]] = {}
  for abbr, expansion in ABBREVIATIONS:
    a, e = re.split(r"[ -]", abbr)[0], re.split(r"[ -]", expansion)[0]
    first_words.setdefault(e.lower(), set()).add(a)
    first_words.setdefault(a.lower(), set()).add(e)
  options = []
  for phrase in phrases:
    words = []
    for word in phrase.split():
      forms = {word} | first_words.get(word.lower(), set())
      words.append("(?:" + "|".join(re.escape(f) for f in sorted(forms)) + ")")
    options.append(r"[\s-]+".join(words))
  return r"(?=\s+(?i:" + "|".join(options) + r")(?![\w/]))"


@functools.lru_cache(maxsize=None)
def _lexicon(name: str) -> tuple[re.Pattern, dict[str, str], dict[str, str]]:
  """(term regex, abbreviation key -> expansion, expansion key -> abbreviation) of one lexicon."""
  if name not in LEXICONS:
    raise ValueError(f"unknown abbreviation lexicon {name!r}; known: {', '.join(LEXICONS)}")
  table = LEXICONS[name]
  terms = []
  for abbr, expansion in table:
    context = _context_pattern(_CONTEXT[abbr]) if abbr in _CONTEXT else ""
    terms += [(_abbr_pattern(abbr) + context, len(abbr)), (_expansion_pattern(expansion) + context, len(expansion))]
  # Longest first so "CP angles" wins over "CP angle", "w/o" over "w/" and "right lower lobe" over
  # "right"; no letter, digit or slash may touch a term on either side.
  terms.sort(key=lambda t: -t[1])
  pattern = re.compile(r"(?<![\w/])(?:" + "|".join(p for p, _ in terms) + r")(?![\w/])")
  return pattern, {_key(a): e for a, e in table}, {_key(e): a for a, e in table}


def swap_abbreviations(text: str, rng: np.random.Generator | None = None, p: float = 1.0,
                       direction: str = "both", lexicon: str = "acronyms") -> str:
  """Replaces each table term with its counterpart with probability `p` (one pass, left to right).

  Args:
    direction: "both", "expand" (abbreviation -> expansion only) or "contract" (the reverse).
    lexicon: "acronyms" (formal abbreviations: what augmenting a signed report should use),
      "shorthand" (telegraphic word shortenings) or "all".
  """
  if direction not in ("both", "expand", "contract"):
    raise ValueError(f"direction must be both, expand or contract, got {direction!r}")
  pattern, to_expansion, to_abbreviation = _lexicon(lexicon)

  def replace(m: re.Match) -> str:
    found, key = m.group(0), _key(m.group(0))
    if key in to_expansion and direction != "contract":
      new = to_expansion[key]
      before = text[:m.start()].rstrip()
      at_start = not before or before[-1] in ".!?:]"
      # A capital starts the expansion at a sentence start, or where a lowercase abbreviation was
      # deliberately capitalized ("(Sm"), so that contracting again restores it.
      capital = found[0].isupper() and (at_start or to_abbreviation[_key(new)].islower())
      new = new[0].upper() + new[1:] if capital else new
    elif key in to_abbreviation and direction != "expand":
      new = to_abbreviation[key]
      new = new[0].upper() + new[1:] if found[0].isupper() and new.islower() else new
    else:
      return found
    return new if rng is None or p >= 1.0 or rng.random() < p else found

  return pattern.sub(replace, text)


# expand / abbreviate are pure and the task builders call them on the same texts many times.
@functools.lru_cache(maxsize=1 << 16)
def expand(text: str, lexicon: str = "all") -> str:
  """Every abbreviation of `lexicon` written out."""
  return swap_abbreviations(text, direction="expand", lexicon=lexicon)


@functools.lru_cache(maxsize=1 << 16)
def abbreviate(text: str, lexicon: str = "all") -> str:
  """The canonical abbreviated form: expanded first, so abbreviations already in the text are
  rewritten in the table's own form too ("right IJ" -> "RIJ"). Hence abbreviate(expand(a)) == a for
  any output a, and a text with one changed word abbreviates to one changed word or term."""
  return swap_abbreviations(expand(text, lexicon), direction="contract", lexicon=lexicon)


def augment(text: str, rng: np.random.Generator, *, shuffle_p: float = 0.3, abbrev_p: float = 0.0,
            drop_section_p: float = 0.0) -> str:
  """Seeded text augmentation of a tagged or plain report; the output keeps the input's format.

  Args:
    shuffle_p: per section, the probability that its sentences are shuffled (sections never mix).
    abbrev_p: per abbreviation-table term, the probability it is swapped with its counterpart.
    drop_section_p: probability that one of FINDINGS / IMPRESSION is dropped when both are present
      (plain text has no sections to drop).
  """
  parts = split_tagged(text)
  clinical = [i for i, (tag, body) in enumerate(parts) if tag in (FINDINGS, IMPRESSION) and body]
  if drop_section_p > 0 and len(clinical) >= 2 and rng.random() < drop_section_p:
    del parts[clinical[int(rng.integers(len(clinical)))]]
  out = []
  for tag, body in parts:
    sentences = split_sentences(body)
    if shuffle_p > 0 and len(sentences) > 1 and rng.random() < shuffle_p:
      sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    body = " ".join(sentences)
    if abbrev_p > 0:
      body = swap_abbreviations(body, rng, abbrev_p)
    out.append(f"[{tag}] {body}" if tag else body)
  return " ".join(s for s in out if s)
