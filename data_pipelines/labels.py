"""Rule-based finding extraction in the style of the CheXpert / NegBio labelers.

Mentions are found with phrase rules (the CheXpert labeler's mention lists, `phrases/mention/*.txt`,
as regular expressions), then each mention gets a status from cues in its own clause:
uncertainty that contains a negation word first ("cannot exclude", "not ruled out"), then negation
("no", "without", "... is not seen"), then uncertainty ("possible", "may", "... or ..."), else
positive. NegBio propagates a cue along a coordinated list with a dependency parse; here a cue
carries over from one mention to the next only when nothing but a list connector lies between them
("no pneumothorax, effusion, or consolidation"). Mentions of a finding are aggregated as CheXpert
does: positive beats uncertain beats negative; "No Finding" is positive when no observation other
than support devices is positive or uncertain.

Beyond the 14 labels, mentions record laterality, severity and lung zone where the clause states
them, and a few sub-types (`DETAILS`) that the demo renderer draws and error injection uses.
Deliberate departures from CheXpert: sternotomy wires and CABG count as support devices (metal the
renderer draws), and "fibrosis" counts as lung opacity rather than "pleural other".
"""
from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
            "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
            "Pleural Other", "Fracture", "Support Devices")
# Sub-types the renderer draws, and their CheXpert parent (None: an "other" abnormality that only
# stops "No Finding", as in CheXpert's no_finding mention list).
DETAILS = {"Nodule": "Lung Lesion", "Mass": "Lung Lesion", "Granuloma": None, "Hyperinflation": None,
           "Pacemaker": "Support Devices", "Central Line": "Support Devices",
           "Endotracheal Tube": "Support Devices", "Enteric Tube": "Support Devices",
           "Chest Tube": "Support Devices", "Sternotomy Wires": "Support Devices",
           "Other Device": "Support Devices", "Aortic Changes": None, "Spine Degeneration": None,
           "Elevated Diaphragm": None, "Hiatal Hernia": None}
# Findings whose side is meaningful (not the heart, the mediastinum or a device).
_LATERAL = {"Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
            "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Nodule", "Mass", "Granuloma",
            "Pacemaker", "Central Line", "Chest Tube", "Elevated Diaphragm"}


@dataclasses.dataclass(frozen=True)
class _Rule:
  finding: str | None  # CheXpert observation; None for details without a parent and "other" findings.
  detail: str | None
  pattern: str
  status: int | None = None  # Fixed status ("heart size is normal" -> 0); None: from context.
  not_after: str | None = None  # A mention right after this (e.g. "pericardial " effusion) is not one.


def _any(*alternatives: str) -> str:
  return "|".join(alternatives)


_HEART = _any(r"heart(?! failure)(?: size)?", r"cardiac (?:silhouette|size|contours?|shadow|dimensions)",
              r"cardiopericardial silhouette")
_HEART = f"(?:{_HEART})"
_MEDIASTINUM = r"(?:cardio)?mediastin(?:um|al)(?: silhouette| contours?| size| width)?"
_NORMAL = r"(?:normal|within normal limits|unremarkable|not (?:significantly )?(?:enlarged|widened))"
_BORDERLINE = _any("borderline", "upper limits? of normal", "top[- ]normal", "upper[- ]normal", "high[- ]normal",
                   "at the upper", "prominent")
_BORDERLINE = f"(?:{_BORDERLINE})"
_NEAR = r"[^.;]{0,30}?\b"  # subject ... predicate within one clause
_BONE = r"(?:calcified|calcific|bone|bony|lytic|sclerotic|blastic|osseous|skin|soft tissue|breast|nipple)\s+$"
_AORTA_CHANGE = r"(?:tortu\w*|ectat\w*|ectasia|unfold\w*|uncoil\w*|atherosclero\w*|calcifi\w*)"
_WORDS = r"(?:[ ,-]+[\w-]+){0,4}?[ ,-]+"  # up to four words in between, within a sentence

_RULES: tuple[_Rule, ...] = (
    # Heart and mediastinum: the subject is neutral, the predicate decides (checked in this order).
    _Rule("Cardiomegaly", None, _HEART + _NEAR + _BORDERLINE, status=-1),
    _Rule("Cardiomegaly", None, r"(?:borderline|top[- ]normal|upper[- ]normal) (?:\w+ )?" + _HEART, status=-1),
    _Rule("Cardiomegaly", None, _HEART + _NEAR + _NORMAL, status=0),
    _Rule("Cardiomegaly", None, r"normal(?:[- ]sized?)? " + _HEART, status=0),
    _Rule("Cardiomegaly", None, r"cardiomediastinal (?:silhouette|contours?)" + _NEAR + _NORMAL, status=0),
    _Rule("Cardiomegaly", None, r"normal(?:[- ]sized?)? cardiomediastinal", status=0),
    _Rule("Cardiomegaly", None, _HEART + _NEAR + r"(?:enlarged|enlargement|large|increased)\b"),
    _Rule("Cardiomegaly", None, _any("cardiomegaly", "cardiac enlargement", "enlarged (?:heart|cardiac silhouette)",
                                     "enlargement of the (?:heart|cardiac silhouette)")),
    _Rule("Enlarged Cardiomediastinum", None, _MEDIASTINUM + _NEAR + _BORDERLINE, status=-1),
    _Rule("Enlarged Cardiomediastinum", None, _MEDIASTINUM + _NEAR + _NORMAL, status=0),
    _Rule("Enlarged Cardiomediastinum", None, r"normal(?:[- ]sized?)? " + _MEDIASTINUM, status=0),
    _Rule("Enlarged Cardiomediastinum", None,
          _MEDIASTINUM + _NEAR + r"(?:widened|widening|wide|enlarged|enlargement)\b"),
    _Rule("Enlarged Cardiomediastinum", None, r"(?:widened|widening of the|wide|enlarged) " + _MEDIASTINUM),
    # Lungs.
    _Rule("Lung Lesion", "Mass", _any(r"mass(?:es)?(?! effect)", "tumou?rs?", "neoplasms?", "carcinoma", r"malignan\w*",
                                      "lump"), not_after=_BONE),
    _Rule("Lung Lesion", "Nodule", _any(r"nodul(?:e|es|ar (?:opacit\w*|densit\w*))", "cavitary lesions?", "lesions?",
                                        r"metasta\w*"), not_after=_BONE),
    _Rule(None, "Granuloma", r"granulom\w*|calcified nodul\w*"),
    _Rule("Lung Opacity", None, _any(r"opaci\w*", r"infiltrat\w*", r"air[- ]?space (?:disease|process|opacit\w*)",
                                     "hazy", "haziness", "ground[- ]glass", "GGOs?", r"reticula\w*",
                                     "interstitial (?:markings?|pattern|prominence|thickening|lung disease|disease)",
                                     "peribronchial (?:thickening|cuffing)", "fibrosis", "fibrotic")),
    _Rule("Lung Opacity", None, r"densit(?:y|ies)", not_after=_BONE + r"|metallic\s+$"),
    _Rule("Lung Opacity", None, r"scar(?:s|ring|red)?", not_after=r"pleur\w*[- ](?:parenchymal\s+)?$"),
    _Rule("Edema", None, _any("edema", "heart failure", "CHF", "(?:pulmonary )?vascular congestion",
                              "pulmonary congestion", "vascular (?:prominence|engorgement)", "indistinct(?:ness)?",
                              "cephalization", "kerley"),
          not_after=r"(?:soft tissue|subcutaneous|chest wall)\s+$"),
    _Rule("Consolidation", None, r"consolidat\w*"),
    _Rule("Pneumonia", None, _any("pneumoni(?:a|as|c|tis)", "bronchopneumonia", "infection", "infectious", "infective"),
          not_after=r"granulomatous\s+$"),
    _Rule("Atelectasis", None, r"atelecta\w*|collapsed?",
          not_after=r"(?:vertebral|vertebra|spine|spinal|body)\s+(?:\w+\s+)?$"),
    _Rule("Pneumothorax", None, r"pneumothora(?:x|ces)|hydropneumothorax|PTX"),
    # Pleura.
    _Rule("Pleural Effusion", None, r"(?:costophrenic|CP) (?:angles?|sulc[iu]s?|recess(?:es)?|___|XXXX)\s+"
          r"(?:are |is |remain |appear )?(?:sharp|clear|preserved|normal)", status=0),
    _Rule("Pleural Effusion", None, r"sharp (?:costophrenic|CP)", status=0),
    _Rule("Pleural Effusion", None, r"(?:pleural )?effusions?|pleural fluid|hydrothorax", not_after=r"pericardial\s+$"),
    _Rule("Pleural Other", None,
          _any(r"pleural[- ](?:parenchymal )?(?:thickening|plaques?|scar\w*|calcifications?|reaction)",
               r"pleuro-?parenchymal scar\w*", "fibrothorax", "apical (?:pleural )?cap(?:ping|s)?")),
    _Rule("Fracture", None, r"fractur\w*|fx"),
    # Devices, specific before generic so an overlap keeps the specific one.
    _Rule("Support Devices", "Pacemaker",
          r"(?:pacemaker|pacer|AICD|ICD|defibrillator|pacing)(?: (?:device|generator|leads?|wires?))?"),
    _Rule("Support Devices", "Chest Tube", _any("chest tubes?", "thoracostomy tubes?",
                                                "pleural (?:drainage )?(?:drain|catheter)s?", "pigtail catheters?")),
    _Rule("Support Devices", "Enteric Tube",
          _any("(?:nasogastric|orogastric|NG|OG|feeding|enteric|dobhoff|gastric)(?: suction)? (?:tube|catheter)s?",
               "NGT", "OGT", "dobhoff")),
    _Rule("Support Devices", "Central Line",
          _any("central (?:venous )?(?:line|catheter)s?", "PICC(?: lines?)?", "port-?a-?cath", "mediport",
               "(?:chest|venous|infusion|power) ?port",
               "(?:subclavian|jugular|IJ)(?: venous)? (?:line|catheter|sheath)s?",
               "(?:dialysis|hemodialysis|venous|swan[- ]ganz|pulmonary artery) catheters?", "catheters?")),
    _Rule("Support Devices", "Endotracheal Tube",
          _any("endotracheal tube", "ET tube", "ETT", "tracheostomy(?: tube)?", "trach tube")),
    _Rule("Support Devices", "Sternotomy Wires",
          _any("(?:median )?sternotomy(?: wires| sutures)?", "sternal (?:wires|sutures|cerclage)", "CABG",
               "(?:coronary )?bypass grafts?")),
    _Rule("Support Devices", "Other Device",
          _any("hardware", "devices?",
               "(?:prosthetic |mechanical |artificial )?(?:heart |aortic |mitral )?valve(?: replacement)?",
               "stents?", "coils?", "cannula", "screws?", "plates?", r"arthroplast\w*", "apparatus", "drains?",
               "(?:support|monitoring|telemetry|EKG|ECG) (?:leads|lines|wires)", "lines and tubes", "tubes and lines",
               "tubes?")),
    # Abnormalities outside the 14 that stop "No Finding" (CheXpert's phrases/mention/no_finding.txt);
    # the first few are told apart because the demo renderer draws them.
    _Rule(None, "Aortic Changes", _any(_AORTA_CHANGE + _WORDS + r"aort\w*", r"aort\w*" + _WORDS + _AORTA_CHANGE,
                                       r"atherosclero\w*")),
    _Rule(None, "Spine Degeneration", _any(r"degenerat\w*", r"osteophyt\w*", r"spondylo\w*", "DJD", "scoliosis",
                                           r"kyphos\w*", "kyphotic")),
    _Rule(None, "Elevated Diaphragm", _any(r"elevat\w*" + _WORDS + r"(?:hemi)?diaphragm\w*",
                                           r"(?:hemi)?diaphragm\w*" + _WORDS + r"elevat\w*", "eventration")),
    _Rule(None, "Hiatal Hernia", r"hiat(?:al|us) hernia"),
    _Rule(None, "Hyperinflation", _any(r"hyperinflat\w*", r"hyperexpan\w*", r"hyperaerat\w*", r"emphysema\w*", "COPD",
                                       r"flatten\w* (?:of the )?(?:hemi)?diaphragms?",
                                       "(?:hemi)?diaphragms? (?:are |is )?flattened")),
    _Rule(None, None, _any(r"blunt\w*", r"elevat\w*", "eventration", "scoliosis", r"degenera\w*", r"calcifi\w*",
                           "bronchospasm", "asthma", "hernia", "plaques?", r"osteophyt\w*", r"atherosclero\w*",
                           r"tortu\w*",
                           "ectatic", "ectasia", r"unfold\w*", "aspiration", "bullae?", "bullous", "contusion",
                           "osteopenia", "pneumomediastinum", "pneumoperitoneum", "cuffing", r"inflam\w*", r"kyphos\w*",
                           "kyphotic", r"prominen\w*", "thickening", "volume loss", r"deformit\w*", "hemorrhage",
                           "hematoma", "bronchitis", "bronchiectasis", "airways? disease", "hypertension",
                           "pericardial effusions?")),
)

# ---- Cues ------------------------------------------------------------------------------------------

_PSEUDO_NEGATION = re.compile(
    r"\bno (?:significant |interval |appreciable |definite )?(?:change|increase|decrease|worsening|improvement)\b|"
    r"\bnot (?:significantly )?changed\b|\bwithout (?:significant |interval )?change\b", re.I)
_STRONG_UNCERTAIN = re.compile(
    r"\b(?:cannot|can ?not|could not|can't) (?:be )?(?:entirely )?(?:exclude[ds]?|rule[ds]? out)|"
    r"\bnot (?:be )?(?:entirely )?(?:excluded|ruled out)|\bdifficult to exclude|\bno evidence to rule out", re.I)
_NEGATION = re.compile(r"\b(?:no|not|without|negative for|free of|absence of|absent|resolution of|resolved|clear of|"
                       r"rather than|never|nor|neither|removal of|removed)\b", re.I)
_UNCERTAIN = re.compile(
    r"\b(?:may|might|possible|possibly|probable|probably|likely|questionable|question of|suspicious|suspect|"
    r"suspected|suggest|suggests|suggestive|suggesting|concern|concerning|could|differential|consider|considered|"
    r"versus|vs|equivocal|borderline|presumed|presumably|indeterminate|uncertain|atypical|r/o|rule out|exclude|"
    r"evaluat\w* for|assess\w* for|possibility)\b|\?", re.I)
_POST_STRONG_UNCERTAIN = re.compile(
    r"^[^;]{0,25}?\b(?:(?:cannot|can ?not|could not) be (?:entirely )?(?:excluded|ruled out)|"
    r"not (?:be )?(?:entirely )?(?:excluded|ruled out)|difficult to exclude)", re.I)
_POST_NEGATION = re.compile(
    r"^\W*(?:[\w/-]+\s+){0,3}?(?:is|are|has|have|was|were)?\s*(?:been\s+)?"
    r"(?:not (?:seen|identified|present|evident|visualized|visible|demonstrated|appreciated|detected|noted|apparent)|"
    r"absent|resolved|no longer|removed|cleared|negative|"
    r"(?:appears? |seems? )?(?:normal|within (?:the )?(?:limits of )?normal))\b", re.I)
_POST_UNCERTAIN = re.compile(
    r"^\W*(?:[\w/-]+\s+){0,2}?(?:is|are|may be|could be|would be)?\s*(?:possible|possibly|likely|suspected|"
    r"questioned|questionable|a possibility|a consideration|suggested|favored|doubtful|uncertain)\b|"
    r"^[^.;]{0,30}\?", re.I)
_OR_LINK = re.compile(r"^\W*(?:or|versus|vs\.?|and/or)\s+(?:[\w-]+\s+){0,2}$", re.I)
# A cue's clause ends at these.
_BREAKER = re.compile(r"\b(?:but|however|although|though|except|aside from|apart from|otherwise|which|whereas|while|"
                      r"there (?:is|are|has been|have been|was|were)|with (?:the )?exception of)\b|[;:]", re.I)
_LIST_STOP = {"with", "but", "however", "which", "is", "are", "was", "were", "has", "have", "there", "although",
              "though", "that", "in", "at", "to", "from", "since", "due", "after", "because"}

_SIDE = re.compile(r"\b(?:(?P<bilateral>bilateral\w*|both|bibas\w*|biapical\w*)|(?P<left>left|LLL|LUL|lingula\w*)|"
                   r"(?P<right>right|RLL|RML|RUL))\b", re.I)
_SIDE_PAIR = re.compile(r"\b(?:left|right)(?:\s+(?:and|or|/|greater than|more than|worse than|>)\s+|/)(?:right|left)\b",
                        re.I)
_ZONE = re.compile(r"\b(?:(?P<upper>upper|apex|apices|apical\w*|biapical\w*|RUL|LUL)|"
                   r"(?P<middle>mid|middle|midlung|mid-lung|lingula\w*|RML|perihilar|hilar|parahilar)|"
                   r"(?P<lower>lower|base|bases|basilar|basal|bibas\w*|retrocardiac|infrahilar|costophrenic|RLL|"
                   r"LLL))\b", re.I)
_SEVERITY_WORDS = (("small", r"trace|tiny|minimal|minimally|small|smaller"), ("mild", r"mild|mildly|slight|slightly"),
                   ("moderate", r"moderate|moderately|moderate-sized|moderate-size"),
                   ("large", r"large|larger|massive|sizable|sizeable"),
                   ("severe", r"severe|severely|marked|markedly|extensive|gross|grossly"))
_SEVERITY = re.compile(r"\b(?:" + "|".join(f"(?P<{name}>{words})" for name, words in _SEVERITY_WORDS) + r")\b", re.I)
# A sentence ends at . ! ? before a space, or where a section tag ("[IMPRESSION]") starts.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|(?=\[[A-Z][A-Z _/()-]*\])")


@dataclasses.dataclass(frozen=True)
class Mention:
  """One rule match with its status and the attributes its clause states."""
  finding: str | None
  detail: str | None
  status: int
  start: int
  end: int
  sentence: tuple[int, int]  # (start, end) of its sentence in the text
  laterality: str | None = None
  severity: str | None = None
  zone: str | None = None


@dataclasses.dataclass(frozen=True)
class Findings:
  """Report-level labels. `laterality`, `severity`, `zone` and `details` are keyed by FINDINGS names
  and, for the sub-types the renderer draws, by DETAILS names."""
  labels: dict[str, int]
  laterality: dict[str, str] = dataclasses.field(default_factory=dict)
  severity: dict[str, str] = dataclasses.field(default_factory=dict)
  zone: dict[str, str] = dataclasses.field(default_factory=dict)
  details: dict[str, int] = dataclasses.field(default_factory=dict)

  def positive(self, name: str) -> bool:
    return self.labels.get(name, self.details.get(name)) == 1


@functools.lru_cache(maxsize=None)
def _compiled() -> tuple[tuple[_Rule, re.Pattern, re.Pattern | None], ...]:
  return tuple((r, re.compile(r"\b(?:" + r.pattern + r")\b", re.I),
                re.compile(r.not_after, re.I) if r.not_after else None) for r in _RULES)


def _matches(text: str) -> list[tuple[int, int, int, _Rule]]:
  """(start, end, rule index, rule), overlaps of one finding resolved in favour of the earlier rule."""
  found = []
  for i, (rule, pattern, not_after) in enumerate(_compiled()):
    for m in pattern.finditer(text):
      if not_after is None or not not_after.search(text[max(0, m.start() - 40):m.start()]):
        found.append((m.start(), m.end(), i, rule))
  kept: list[tuple[int, int, int, _Rule]] = []
  for start, end, i, rule in sorted(found, key=lambda f: (f[2], f[0])):
    group = rule.finding or rule.detail
    if not any((k[3].finding or k[3].detail) == group and start < k[1] and k[0] < end for k in kept):
      kept.append((start, end, i, rule))
  return sorted(kept)


def _sentences(text: str) -> list[tuple[int, int]]:
  ends = sorted({m.end() for m in _SENTENCE_END.finditer(text)} - {0})
  starts = [0] + ends
  return [(s, e) for s, e in zip(starts, ends + [len(text)]) if text[s:e].strip()]


def _last_words(text: str, n: int) -> str:
  words = text.split()
  return " ".join(words[-n:])


def _is_list_link(between: str) -> bool:
  """Text between two mentions that only continues a list: ", ", " or ", ", and focal "."""
  words = re.findall(r"[\w/'-]+", between.lower())
  return len(words) <= 4 and not _LIST_STOP.intersection(words) and not re.search(r"[.;:]", between)


def _side(pre: str, span: str, post: str) -> str | None:
  """The side a mention's own words state: in it, just before it (the nearest), or just after it."""
  for window, take_last in ((span, True), (pre, True), (" ".join(post.split()[:5]), False)):
    if _SIDE_PAIR.search(window):
      return "bilateral"
    hits = list(_SIDE.finditer(window))
    if hits:
      hit = hits[-1] if take_last else hits[0]
      return next(k for k, v in hit.groupdict().items() if v)
  return None


def _group_in(pattern: re.Pattern, windows: tuple[str, ...]) -> str | None:
  """Name of the matching group of `pattern` in the first window where it matches (its last match)."""
  for window in windows:
    hits = list(pattern.finditer(window))
    if hits:
      return next(k for k, v in hits[-1].groupdict().items() if v)
  return None


@dataclasses.dataclass
class _Context:
  """The words around one mention that decide its status and attributes."""
  span: str  # the mention itself
  pre: str  # its own clause before it: from the previous mention or clause break, last 7 words
  post: str  # after it, up to the next mention or clause break
  side_pre: str  # before it, from the previous mention (or ";"), last 8 words: where sides and grades are
  linked: bool  # joined to the previous mention by a list connector only
  or_before: bool  # joined to the previous mention by "or" / "versus"


def _status(rule: _Rule, c: _Context, prev_cue: int | None) -> tuple[int, int | None]:
  """(status, the status a following list item inherits, or None)."""
  if rule.status is not None:
    return rule.status, None
  if _STRONG_UNCERTAIN.search(c.pre) or _POST_STRONG_UNCERTAIN.search(c.post):
    return -1, -1
  if re.search(r"\b(?:not|no)\b", c.span, re.I):  # "heart is not enlarged"
    return 0, None
  if _NEGATION.search(c.pre):
    return 0, 0
  if _POST_NEGATION.search(c.post):
    return 0, None
  if c.linked and prev_cue is not None:  # "no pneumothorax, effusion or consolidation"
    return prev_cue, prev_cue
  if _UNCERTAIN.search(c.pre) or _POST_UNCERTAIN.search(c.post) or _OR_LINK.match(c.post + " ") or c.or_before:
    return -1, -1
  return 1, None


def mentions(text: str) -> list[Mention]:
  """Every mention in `text` with its status, laterality, severity and zone."""
  return list(_mentions(text))


# Building the supervised tasks re-labels the same sentences many times (each variant is checked by
# re-labelling); caching cuts that build by about half.
@functools.lru_cache(maxsize=1 << 16)
def _mentions(text: str) -> tuple[Mention, ...]:
  out: list[Mention] = []
  matches = _matches(text)
  for sent_start, sent_end in _sentences(text):
    prev_end, prev, prev_cue = None, None, None
    in_sentence = [m for m in matches if sent_start <= m[0] < sent_end]
    for j, (start, end, _, rule) in enumerate(in_sentence):
      clause_start = max([sent_start] + [b.end() for b in _BREAKER.finditer(text, sent_start, start)])
      next_start = in_sentence[j + 1][0] if j + 1 < len(in_sentence) else sent_end
      post_end = min([next_start] + [b.start() for b in _BREAKER.finditer(text, end, next_start)])
      side_pre = text[prev_end if prev_end is not None else sent_start:start]
      side_pre = side_pre[max([0] + [b.end() for b in re.finditer(r"[;:]", side_pre)]):]
      c = _Context(
          span=text[start:end],
          pre=_PSEUDO_NEGATION.sub(" ", _last_words(text[max(clause_start, prev_end or 0):start], 7)),
          post=text[end:post_end],
          side_pre=_last_words(side_pre, 8),
          linked=prev_end is not None and prev_end > clause_start and _is_list_link(text[prev_end:start]),
          or_before=prev_end is not None and bool(_OR_LINK.match(text[prev_end:start])))
      status, cue = _status(rule, c, prev_cue)
      name = rule.detail or rule.finding
      lateral = name in _LATERAL or rule.finding in _LATERAL
      side = _side(c.side_pre, c.span, c.post) if lateral else None
      if side is None and lateral and c.linked and prev.laterality:
        side = prev.laterality  # "left lower lobe consolidation and effusion"
      if side is None and rule.finding in ("Pleural Effusion", "Pneumothorax") and c.span.lower().endswith(("ions", "ces")):
        side = "bilateral"  # "effusions" with no side stated
      severity = _group_in(_SEVERITY, (c.span, _last_words(c.side_pre, 4), " ".join(c.post.split()[:4])))
      if rule.finding == "Support Devices" or (rule.finding in ("Cardiomegaly", "Enlarged Cardiomediastinum")
                                               and severity in ("small", "large")):
        severity = None  # devices have no grade; "large heart" is the finding itself, not a grade
      zone = _group_in(_ZONE, (c.span, c.side_pre, " ".join(c.post.split()[:5]))) if lateral else None
      prev = Mention(rule.finding, rule.detail, status, start, end, (sent_start, sent_end), side, severity, zone)
      out.append(prev)
      prev_end, prev_cue = end, cue
  return tuple(out)


def _combine_sides(sides: list[str]) -> str | None:
  sides = set(s for s in sides if s)
  if not sides:
    return None
  return sides.pop() if len(sides) == 1 else "bilateral"


def extract(text: str) -> Findings:
  """Aggregated labels of a report (any text; sections are not needed)."""
  return aggregate(text, mentions(text))


def aggregate(text: str, found: list[Mention]) -> Findings:
  """Report-level labels from the mentions of `text` (as `extract`, for callers that hold both)."""
  by_name: dict[str, list[Mention]] = {}
  for m in found:
    for name in {m.finding, m.detail} - {None}:
      by_name.setdefault(name, []).append(m)
  labels, details, laterality, severity, zone = {}, {}, {}, {}, {}
  for name, ms in by_name.items():
    statuses = {m.status for m in ms}
    status = 1 if 1 in statuses else (-1 if -1 in statuses else 0)
    (labels if name in FINDINGS else details)[name] = status
    chosen = [m for m in ms if m.status == status]
    if (side := _combine_sides([m.laterality for m in chosen])):
      laterality[name] = side
    if (sev := next((m.severity for m in chosen if m.severity), None)):
      severity[name] = sev
    if (z := next((m.zone for m in chosen if m.zone), None)):
      zone[name] = z
  abnormal = any(m.status != 0 and m.finding != "Support Devices" and DETAILS.get(m.detail) != "Support Devices"
                 for m in found)
  if text.strip() and not abnormal:
    labels["No Finding"] = 1
  return Findings(labels, laterality, severity, zone, details)


def label_vector(text: str) -> np.ndarray:
  """int8 (14,) in FINDINGS order: 1 positive, 0 negative or not mentioned, -1 uncertain."""
  labels = extract(text).labels
  return np.array([labels.get(f, 0) for f in FINDINGS], np.int8)
