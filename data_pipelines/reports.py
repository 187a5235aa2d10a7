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


# Curated radiology abbreviations (abbreviation, expansion). Ambiguous ones (PE: effusion or embolism,
# PA: view or artery) are left out on purpose: a swap must never change the meaning.
ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("PTX", "pneumothorax"), ("CHF", "congestive heart failure"),
    ("RLL", "right lower lobe"), ("RML", "right middle lobe"), ("RUL", "right upper lobe"),
    ("LLL", "left lower lobe"), ("LUL", "left upper lobe"),
    ("ETT", "endotracheal tube"), ("NGT", "nasogastric tube"), ("OGT", "orogastric tube"),
    ("PICC", "peripherally inserted central catheter"),
    ("CP angles", "costophrenic angles"), ("CP angle", "costophrenic angle"),
    ("s/p", "status post"), ("w/o", "without"), ("w/", "with"), ("c/w", "consistent with"),
    ("GGO", "ground-glass opacity"), ("NAD", "no acute disease"),
    ("COPD", "chronic obstructive pulmonary disease"), ("ARDS", "acute respiratory distress syndrome"),
    ("IJ", "internal jugular"), ("SVC", "superior vena cava"), ("IVC", "inferior vena cava"),
    ("AICD", "automatic implantable cardioverter-defibrillator"),
    ("CABG", "coronary artery bypass graft"), ("ILD", "interstitial lung disease"),
    ("DJD", "degenerative joint disease"), ("TB", "tuberculosis"), ("CXR", "chest radiograph"),
    ("b/l", "bilateral"), ("r/o", "rule out"), ("hx", "history"), ("fx", "fracture"),
)


def _abbr_pattern(abbr: str) -> str:
  # All-caps abbreviations match exactly (so "Ett" in prose is left alone); lowercase ones like
  # "s/p" also match "S/p" at a sentence start.
  body = re.escape(abbr).replace(r"\ ", r"\s+")
  return body if any(c.isupper() for c in abbr) else f"(?i:{body})"


def _expansion_pattern(expansion: str) -> str:
  return "(?i:" + r"[\s-]+".join(re.escape(w) for w in re.split(r"[ -]", expansion)) + ")"


def _key(text: str) -> str:
  return " ".join(re.split(r"[\s-]+", text.lower()))


_TO_EXPANSION = {_key(a): e for a, e in ABBREVIATIONS}
_TO_ABBREVIATION = {_key(e): a for a, e in ABBREVIATIONS}
_TERMS = sorted([(_abbr_pattern(a), len(a)) for a, _ in ABBREVIATIONS] +
                [(_expansion_pattern(e), len(e)) for _, e in ABBREVIATIONS], key=lambda t: -t[1])
# Longest first so "CP angles" wins over "CP angle" and "w/o" over "w/"; no letter, digit or slash
# may touch a term on either side.
_TERM = re.compile(r"(?<![\w/])(?:" + "|".join(p for p, _ in _TERMS) + r")(?![\w/])")


def swap_abbreviations(text: str, rng: np.random.Generator | None = None, p: float = 1.0,
                       direction: str = "both") -> str:
  """Replaces each table term with its counterpart with probability `p`.

  Args:
    direction: "both", "expand" (abbreviation -> expansion only) or "contract" (the reverse).
  """
  if direction not in ("both", "expand", "contract"):
    raise ValueError(f"direction must be both, expand or contract, got {direction!r}")

  def replace(m: re.Match) -> str:
    found, key = m.group(0), _key(m.group(0))
    if key in _TO_EXPANSION and direction != "contract":
      new = _TO_EXPANSION[key]
      before = text[:m.start()].rstrip()
      at_start = not before or before[-1] in ".!?:]"
      new = new[0].upper() + new[1:] if at_start and found[0].isupper() else new
    elif key in _TO_ABBREVIATION and direction != "expand":
      new = _TO_ABBREVIATION[key]
      new = new[0].upper() + new[1:] if found[0].isupper() and new.islower() else new
    else:
      return found
    return new if rng is None or p >= 1.0 or rng.random() < p else found

  return _TERM.sub(replace, text)


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
