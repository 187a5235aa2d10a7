"""Seeded rule-based report variants: positives that keep the meaning, hard negatives with one error.

Hard negatives follow the paper's report-error discrimination task: exactly one injected error of a
named type (laterality/location swap, severity change, false finding, false negation). Every edit is
checked by re-labelling the result with `labels.extract`: the intended attribute of the intended
finding must change and nothing else may (except "No Finding", which follows the others). An edit
that fails the check is dropped and the next candidate is tried, so a returned variant is never a
silent no-op or a double error. Each variant records what changed in words.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from data_pipelines import labels as labels_lib
from data_pipelines import reports

ERROR_TYPES = ("laterality", "severity", "false_finding", "false_negation")


@dataclasses.dataclass(frozen=True)
class Variant:
  text: str
  kind: str  # "positive" or one of ERROR_TYPES
  change: str  # human-readable description of the edit


# ---- Positives -----------------------------------------------------------------------------------


def _reorder(text: str, rng: np.random.Generator) -> str:
  """Sentences shuffled within each section, guaranteed to differ when any section has two."""
  parts = reports.split_tagged(text)
  out, changed = [], False
  for tag, body in parts:
    sentences = reports.split_sentences(body)
    order = list(rng.permutation(len(sentences)))
    if len(sentences) > 1 and not changed and order == sorted(order):
      order[0], order[1] = order[1], order[0]
    changed |= order != sorted(order)
    body = " ".join(sentences[i] for i in order)
    out.append(f"[{tag}] {body}" if tag else body)
  return " ".join(s for s in out if s)


def positives(text: str, rng: np.random.Generator) -> list[Variant]:
  """Meaning-preserving rewrites of `text` (tagged or plain) that differ from it."""
  candidates = [
      Variant(reports.swap_abbreviations(text, direction="contract"), "positive", "abbreviated"),
      Variant(reports.swap_abbreviations(text, direction="expand"), "positive", "abbreviations expanded"),
      Variant(_reorder(text, rng), "positive", "sentences reordered within sections"),
  ]
  report = reports.from_tagged(text)
  if reports.TAG.search(text) and report.findings and report.impression:
    candidates.append(Variant(f"[{reports.IMPRESSION}] {report.impression}", "positive", "findings dropped"))
    candidates.append(Variant(f"[{reports.FINDINGS}] {report.findings}", "positive", "impression dropped"))
  return [v for v in candidates if v.text != text]


# ---- Hard negatives ------------------------------------------------------------------------------

_SIDE_SWAP = {"left": "right", "right": "left", "lll": "RLL", "rll": "LLL", "lul": "RUL", "rul": "LUL"}
_SIDE_TOKEN = re.compile(r"\b(?:left|right|LLL|RLL|LUL|RUL)\b", re.I)
_ZONE_SWAP = {"upper": "lower", "lower": "upper", "apical": "basilar", "basilar": "apical", "basal": "apical",
              "apex": "base", "base": "apex", "apices": "bases", "bases": "apices"}
_ZONE_TOKEN = re.compile(r"\b(?:" + "|".join(_ZONE_SWAP) + r")\b", re.I)
_SEVERITY_SWAP = {
    "small": "large", "tiny": "large", "trace": "large", "minimal": "extensive", "large": "small",
    "massive": "small", "mild": "severe", "mildly": "markedly", "slight": "marked", "slightly": "markedly",
    "severe": "mild", "severely": "mildly", "marked": "mild", "markedly": "mildly", "extensive": "minimal",
    "moderate": "large", "moderately": "markedly",
}
_SEVERITY_TOKEN = re.compile(r"\b(?:" + "|".join(_SEVERITY_SWAP) + r")\b", re.I)
# Findings graded by degree ("severe") rather than size ("large").
_DEGREE = {"Cardiomegaly", "Enlarged Cardiomediastinum", "Edema"}
_PREDICATE = re.compile(r"\b(?:enlarged|enlargement|large|increased|widened)\b", re.I)


def _match_case(new: str, old: str) -> str:
  if old.isupper() and len(old) > 1:
    return new.upper()
  return new[0].upper() + new[1:] if old[0].isupper() else new


def _edit(text: str, edits: list[tuple[int, int, str]]) -> str:
  for start, end, new in sorted(edits, reverse=True):
    text = text[:start] + new + text[end:]
  return text


def _nearest(pattern: re.Pattern, text: str, m: labels_lib.Mention,
             found: list[labels_lib.Mention]) -> re.Match | None:
  """The token of `pattern` that belongs to mention `m`: the last one between the previous mention
  and the end of `m`, else the first one between `m` and the next mention (same sentence)."""
  lo = max([m.sentence[0]] + [o.end for o in found if o.sentence == m.sentence and o.end <= m.start])
  hi = min([m.sentence[1]] + [o.start for o in found if o.sentence == m.sentence and o.start >= m.end])
  before = list(pattern.finditer(text, lo, m.end))
  return before[-1] if before else pattern.search(text, m.end, hi)


def _others_same(a: labels_lib.Findings, b: labels_lib.Findings, finding: str, field: str) -> bool:
  """True when `b` equals `a` in every label and in `field` for every finding but `finding` (and
  "No Finding", which follows the others); for an attribute field, `finding`'s label too."""
  others = lambda d: {k: v for k, v in d.items() if k in labels_lib.FINDINGS and k not in (finding, "No Finding")}
  same_label = field == "labels" or a.labels.get(finding) == b.labels.get(finding)
  return same_label and others(a.labels) == others(b.labels) and others(getattr(a, field)) == others(getattr(b, field))


def _positive_mentions(found: list[labels_lib.Mention], finding: str) -> list[labels_lib.Mention]:
  return [m for m in found if m.finding == finding and m.status == 1]


def _swap_tokens(text: str, rng, pattern: re.Pattern, table: dict, field: str) -> tuple[str, str] | None:
  before = labels_lib.extract(text)
  found = labels_lib.mentions(text)
  attrs = getattr(before, field)
  candidates = [f for f in labels_lib.FINDINGS if before.labels.get(f) == 1 and attrs.get(f) in
                ({"left", "right"} if field == "laterality" else {"upper", "middle", "lower"})]
  for finding in [candidates[i] for i in rng.permutation(len(candidates))]:
    tokens = {t.span(): t.group(0) for m in _positive_mentions(found, finding)
              if (t := _nearest(pattern, text, m, found)) is not None}
    if not tokens:
      continue
    edits = [(s, e, _match_case(table[old.lower()], old)) for (s, e), old in tokens.items()]
    new_text = _edit(text, edits)
    after = labels_lib.extract(new_text)
    if getattr(after, field).get(finding) not in (None, attrs[finding]) and _others_same(before, after, finding, field):
      olds = sorted({old.lower() for old in tokens.values()})
      news = sorted({e[2].lower() for e in edits})
      return new_text, f"{field}: {'/'.join(olds)} -> {'/'.join(news)} ({finding})"
  return None


def _laterality(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
  """Left <-> right for one finding (all its positive mentions); falls back to a zone swap."""
  return (_swap_tokens(text, rng, _SIDE_TOKEN, _SIDE_SWAP, "laterality") or
          _swap_tokens(text, rng, _ZONE_TOKEN, _ZONE_SWAP, "zone"))


_NOT_MODIFIER = {"with", "and", "or", "is", "are", "was", "were", "of", "in", "on", "at", "the", "a", "an", "there",
                 "no", "by", "to", "for", "from", "has", "have", "increased", "new", "some", "persistent", "stable"}


def _phrase_start(text: str, m: labels_lib.Mention) -> int:
  """Start of the noun phrase around a mention ("a [left basilar] opacity"): where a grade goes."""
  at = m.start
  for word in reversed(list(re.finditer(r"[A-Za-z-]+|[^A-Za-z\s]", text[m.sentence[0]:m.start]))):
    if not word.group(0)[0].isalpha() or word.group(0).lower() in _NOT_MODIFIER:
      break
    at = m.sentence[0] + word.start()
  return at


def _severity(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
  """Changes a stated grade to the opposite one, or adds a grade where none is stated."""
  before = labels_lib.extract(text)
  found = labels_lib.mentions(text)
  candidates = [f for f in labels_lib.FINDINGS if before.labels.get(f) == 1 and f not in ("No Finding", "Support Devices")]
  for finding in [candidates[i] for i in rng.permutation(len(candidates))]:
    mentions = _positive_mentions(found, finding)
    edits = []
    if finding in before.severity:
      for m in mentions:
        token = _nearest(_SEVERITY_TOKEN, text, m, found)
        if token is not None:
          new = _SEVERITY_SWAP[token.group(0).lower()]
          if finding in _DEGREE and new in ("small", "large"):
            new = {"small": "mild", "large": "severe"}[new]
          edits.append((token.start(), token.end(), _match_case(new, token.group(0))))
      change = "severity: {} -> {{}} ({})".format(before.severity[finding], finding)
    else:
      m = mentions[0]
      predicate = _PREDICATE.search(text, m.start, m.end) if m.end - m.start > 15 else None
      if predicate:  # "The heart is enlarged" -> "The heart is markedly enlarged"
        edits.append((predicate.start(), predicate.start(), "markedly "))
      else:
        at = _phrase_start(text, m)
        word = "severe" if finding in _DEGREE else "large"
        at_start = not reports.TAG.sub("", text[m.sentence[0]:at]).strip()
        if at_start and text[at].isupper():
          edits.append((at, at + 1, word.capitalize() + " " + text[at].lower()))
        else:
          edits.append((at, at, word + " "))
      change = "severity: none stated -> {{}} ({})".format(finding)
    if not edits:
      continue
    new_text = _edit(text, edits)
    after = labels_lib.extract(new_text)
    if after.severity.get(finding) not in (None, before.severity.get(finding)) and _others_same(before, after, finding, "severity"):
      return new_text, change.format(after.severity[finding])
  return None


# One sentence per finding, stating it with laterality/severity where that applies; {side} and
# {sev} are filled at random. Used for false findings.
_TEMPLATES = {
    "Enlarged Cardiomediastinum": ("The mediastinum is widened.",),
    "Cardiomegaly": ("The heart is {deg} enlarged.", "{Deg2} cardiomegaly."),
    "Lung Opacity": ("Patchy airspace opacity in the {side} {zone} lung.",),
    "Lung Lesion": ("There is a {mm} mm nodule in the {side} {zone} lobe.", "{Side} {zone} lobe mass."),
    "Edema": ("{Deg2} pulmonary edema.",),
    "Consolidation": ("Focal consolidation in the {side} {zone} lobe.",),
    "Pneumonia": ("Findings consistent with {side} {zone} lobe pneumonia.",),
    "Atelectasis": ("{Side} basilar atelectasis.",),
    "Pneumothorax": ("There is a {sev} {side} pneumothorax.",),
    "Pleural Effusion": ("There is a {sev} {side} pleural effusion.",),
    "Pleural Other": ("{Side} apical pleural thickening.",),
    "Fracture": ("Acute fracture of the {side} {nth} rib.",),
    "Support Devices": ("{Side} chest wall pacemaker with leads in the right atrium and right ventricle.",
                        "Endotracheal tube tip 4 cm above the carina."),
}


def _fill(template: str, rng: np.random.Generator) -> str:
  pick = lambda xs: xs[int(rng.integers(len(xs)))]
  values = {"side": pick(("left", "right")), "zone": pick(("upper", "lower")), "sev": pick(("small", "moderate", "large")),
            "deg": pick(("mildly", "moderately", "markedly")), "deg2": pick(("mild", "moderate", "severe")),
            "mm": str(int(rng.integers(5, 25))), "nth": pick(("fourth", "fifth", "sixth", "seventh"))}
  values.update({k.capitalize(): v.capitalize() for k, v in list(values.items())})
  return template.format(**values)


def _insert_sentence(text: str, sentence: str, rng: np.random.Generator) -> str:
  """Inserts a sentence at a random sentence boundary of the FINDINGS section (else the whole text)."""
  parts = reports.split_tagged(text)
  index = next((i for i, (tag, _) in enumerate(parts) if tag == reports.FINDINGS), 0)
  tag, body = parts[index]
  sentences = reports.split_sentences(body)
  sentences.insert(int(rng.integers(len(sentences) + 1)), sentence)
  parts[index] = (tag, " ".join(sentences))
  return " ".join(f"[{t}] {b}" if t else b for t, b in parts)


def _false_finding(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
  """States a finding the report does not mention at all."""
  before = labels_lib.extract(text)
  absent = [f for f in _TEMPLATES if f not in before.labels]
  for finding in [absent[i] for i in rng.permutation(len(absent))]:
    templates = _TEMPLATES[finding]
    sentence = _fill(templates[int(rng.integers(len(templates)))], rng)
    new_text = _insert_sentence(text, sentence, rng)
    after = labels_lib.extract(new_text)
    if after.labels.get(finding) == 1 and _others_same(before, after, finding, "labels"):
      return new_text, f"false finding: added {sentence!r} ({finding})"
  return None


_NEGATED = {
    "Enlarged Cardiomediastinum": "The mediastinum is not widened.", "Cardiomegaly": "The heart is not enlarged.",
    "Lung Opacity": "No focal airspace opacity.", "Lung Lesion": "No pulmonary nodule or mass.",
    "Edema": "No pulmonary edema.", "Consolidation": "No focal consolidation.", "Pneumonia": "No pneumonia.",
    "Atelectasis": "No atelectasis.", "Pneumothorax": "No pneumothorax.", "Pleural Effusion": "No pleural effusion.",
    "Pleural Other": "No pleural thickening.", "Fracture": "No fracture.", "Support Devices": "No support devices.",
}
_THERE_IS = re.compile(r"^(\W*)there (is|are) (?:an? |some |again |also |now |still )*", re.I)
_IS_PREDICATE = re.compile(r"\b(is|are|appears|remains)\s+(?:\w+ly\s+)?(enlarged|widened|increased)\b", re.I)


def _negate_sentence(sentence: str, finding: str) -> str:
  """The sentence saying the opposite: "There is a small X" -> "There is no X", "The heart is mildly
  enlarged" -> "The heart is not enlarged", a bare noun phrase "Small left X." -> "No left X.";
  anything more complex becomes the finding's plain negative sentence."""
  stripped = sentence.strip()
  if _THERE_IS.match(stripped):
    rest = _SEVERITY_TOKEN.sub("", _THERE_IS.sub("", stripped, count=1))
    return _THERE_IS.match(stripped).group(1) + f"There {_THERE_IS.match(stripped).group(2).lower()} no " + " ".join(rest.split())
  if (m := _IS_PREDICATE.search(stripped)):
    return stripped[:m.start()] + f"{m.group(1)} not {m.group(2)}" + stripped[m.end():]
  words = stripped.split()
  if len(words) <= 6 and not re.search(r"\b(?:with|and|or|but|in|of|no|not)\b", stripped, re.I):
    rest = " ".join(_SEVERITY_TOKEN.sub("", stripped).split())
    return "No " + rest[0].lower() + rest[1:] if rest else _NEGATED[finding]
  return _NEGATED[finding]


def _false_negation(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
  """Denies a finding the report states: every sentence stating it is rewritten as its negation."""
  before = labels_lib.extract(text)
  found = labels_lib.mentions(text)
  positive = [f for f in _NEGATED if before.labels.get(f) == 1]
  for finding in [positive[i] for i in rng.permutation(len(positive))]:
    spans = sorted({m.sentence for m in _positive_mentions(found, finding)})
    edits = []
    for start, end in spans:
      sentence = text[start:end]
      lead = re.match(r"\s*(?:\[[A-Z][A-Z _/()-]*\]\s*)?", sentence).group(0)  # Keep spacing and a tag.
      edits.append((start, end, lead + _negate_sentence(sentence[len(lead):], finding)))
    new_text = _edit(text, edits)
    after = labels_lib.extract(new_text)
    if after.labels.get(finding) == 0 and _others_same(before, after, finding, "labels"):
      return new_text, f"false negation: {finding} denied"
  return None


_INJECT = {"laterality": _laterality, "severity": _severity, "false_finding": _false_finding,
           "false_negation": _false_negation}


def hard_negative(text: str, rng: np.random.Generator, error_type: str | None = None) -> Variant | None:
  """`text` with exactly one injected error; None when that error cannot be injected into it.

  Args:
    error_type: one of ERROR_TYPES, or None for a random type that applies (tried in random order).
  """
  if error_type is not None and error_type not in _INJECT:
    raise ValueError(f"unknown error type {error_type!r}; known: {', '.join(ERROR_TYPES)}")
  types = [error_type] if error_type else [ERROR_TYPES[i] for i in rng.permutation(len(ERROR_TYPES))]
  for kind in types:
    result = _INJECT[kind](text, rng)
    if result is not None:
      return Variant(result[0], kind, result[1])
  return None
