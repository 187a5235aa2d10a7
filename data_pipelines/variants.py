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
from typing import Callable, Mapping, Sequence

import numpy as np

from data_pipelines import labels as labels_lib
from data_pipelines import reports
from data_pipelines import shorthand

ERROR_TYPES = ("laterality", "severity", "false_finding", "false_negation")


@dataclasses.dataclass(frozen=True)
class Variant:
  text: str
  kind: str  # "positive" or one of ERROR_TYPES
  change: str  # human-readable description of the edit


# ---- Positives -----------------------------------------------------------------------------------


def reorder_sentences(text: str, rng: np.random.Generator) -> str:
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


meaning = shorthand.meaning  # labels of the expanded text (cached; do not mutate the result)


def positives(text: str, rng: np.random.Generator) -> list[Variant]:
  """Meaning-preserving rewrites of `text` (tagged or plain) that differ from it and from each other.

  Abbreviation uses the full lexicon (`reports.abbreviate`); the telegraphic shorthand is kept only
  when re-labelling finds the same findings (`shorthand.telegraphic`).
  """
  candidates = [
      Variant(reports.abbreviate(text), "positive", "abbreviated"),
      Variant(reports.expand(text), "positive", "abbreviations expanded"),
      Variant(reorder_sentences(text, rng), "positive", "sentences reordered within sections"),
  ]
  if (short := shorthand.telegraphic(text, int(rng.integers(2**31)))) is not None:
    candidates.append(Variant(short, "positive", "telegraphic shorthand"))
  report = reports.from_tagged(text)
  if reports.TAG.search(text) and report.findings and report.impression:
    candidates.append(Variant(f"[{reports.IMPRESSION}] {report.impression}", "positive", "findings dropped"))
    candidates.append(Variant(f"[{reports.FINDINGS}] {report.findings}", "positive", "impression dropped"))
  seen, out = {text}, []
  for v in candidates:
    if v.text not in seen:
      seen.add(v.text)
      out.append(v)
  return out


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
_PREDICATE = re.compile(r"\b(?:enlarged|large|increased|widened)\b", re.I)
# Words that end a noun phrase on its left: a grade goes after them ("a [large] left effusion").
_NOT_MODIFIER = {"with", "and", "or", "is", "are", "was", "were", "of", "in", "on", "at", "the", "a", "an", "there",
                 "no", "by", "to", "for", "from", "has", "have", "increased", "new", "some", "persistent", "stable"}


@dataclasses.dataclass(frozen=True)
class _Labelled:
  """A text with its labels and mentions, computed once per `hard_negative` call."""
  text: str
  findings: labels_lib.Findings
  mentions: list[labels_lib.Mention]

  @classmethod
  def of(cls, text: str) -> "_Labelled":
    found = labels_lib.mentions(text)
    return cls(text, labels_lib.aggregate(text, found), found)

  def positive_mentions(self, finding: str) -> list[labels_lib.Mention]:
    return [m for m in self.mentions if m.finding == finding and m.status == 1]

  def nearest(self, pattern: re.Pattern, m: labels_lib.Mention) -> re.Match | None:
    """The token of `pattern` that belongs to mention `m`: the last one between the previous
    mention and the end of `m`, else the first one between `m` and the next mention."""
    same = [o for o in self.mentions if o.sentence == m.sentence]
    lo = max([m.sentence[0]] + [o.end for o in same if o.end <= m.start])
    hi = min([m.sentence[1]] + [o.start for o in same if o.start >= m.end])
    before = list(pattern.finditer(self.text, lo, m.end))
    return before[-1] if before else pattern.search(self.text, m.end, hi)


def _match_case(new: str, old: str) -> str:
  if old.isupper() and len(old) > 1:
    return new.upper()
  return new[0].upper() + new[1:] if old[0].isupper() else new


def _edit(text: str, edits: list[tuple[int, int, str]]) -> str:
  for start, end, new in sorted(edits, reverse=True):
    text = text[:start] + new + text[end:]
  return text


def _others_same(a: labels_lib.Findings, b: labels_lib.Findings, finding: str, field: str) -> bool:
  """True when `b` equals `a` in every label and in `field` for every finding but `finding` (and
  "No Finding", which follows the others); for an attribute field, `finding`'s label too."""
  def others(d: dict) -> dict:
    return {k: v for k, v in d.items() if k in labels_lib.FINDINGS and k not in (finding, "No Finding")}
  same_label = field == "labels" or a.labels.get(finding) == b.labels.get(finding)
  return (same_label and others(a.labels) == others(b.labels) and
          others(getattr(a, field)) == others(getattr(b, field)))


def _shuffled(items: list, rng: np.random.Generator) -> list:
  return [items[i] for i in rng.permutation(len(items))]


def _swap_tokens(src: _Labelled, rng: np.random.Generator, pattern: re.Pattern, table: dict,
                 field: str, avoid: frozenset[str] = frozenset()) -> tuple[str, str] | None:
  """Swaps the `field` token of every positive mention of one finding (chosen at random)."""
  attrs = getattr(src.findings, field)
  allowed = {"left", "right"} if field == "laterality" else {"upper", "middle", "lower"}
  candidates = [f for f in labels_lib.FINDINGS if src.findings.labels.get(f) == 1 and attrs.get(f) in allowed]
  for finding in _shuffled(candidates, rng):
    tokens = {t.span(): t.group(0) for m in src.positive_mentions(finding) if (t := src.nearest(pattern, m))}
    edits = [(s, e, _match_case(table[old.lower()], old)) for (s, e), old in tokens.items()]
    new_text = _edit(src.text, edits)
    after = labels_lib.extract(new_text)
    if edits and new_text not in avoid and getattr(after, field).get(finding) not in (None, attrs[finding]) and \
        _others_same(src.findings, after, finding, field):
      olds, news = sorted({old.lower() for old in tokens.values()}), sorted({e[2].lower() for e in edits})
      return new_text, f"{field}: {'/'.join(olds)} -> {'/'.join(news)} ({finding})"
  return None


def _laterality(src: _Labelled, rng: np.random.Generator,
                avoid: frozenset[str] = frozenset()) -> tuple[str, str] | None:
  """Left <-> right for one finding (all its positive mentions); falls back to a zone swap."""
  return (_swap_tokens(src, rng, _SIDE_TOKEN, _SIDE_SWAP, "laterality", avoid) or
          _swap_tokens(src, rng, _ZONE_TOKEN, _ZONE_SWAP, "zone", avoid))


def _phrase_start(text: str, m: labels_lib.Mention) -> int:
  """Start of the noun phrase around a mention ("a [left basilar] opacity"): where a grade goes."""
  at = m.start
  for word in reversed(list(re.finditer(r"[A-Za-z-]+|[^A-Za-z\s]", text[m.sentence[0]:m.start]))):
    if not word.group(0)[0].isalpha() or word.group(0).lower() in _NOT_MODIFIER:
      break
    at = m.sentence[0] + word.start()
  return at


def _grade_edits(src: _Labelled, finding: str) -> list[tuple[int, int, str]]:
  """Edits that flip the stated grade of `finding`, or add one ("large", "markedly") if none is stated."""
  mentions = src.positive_mentions(finding)
  if finding in src.findings.severity:
    edits = []
    for m in mentions:
      if (token := src.nearest(_SEVERITY_TOKEN, m)) is not None:
        new = _SEVERITY_SWAP[token.group(0).lower()]
        if finding in _DEGREE and new in ("small", "large"):
          new = {"small": "mild", "large": "severe"}[new]
        edits.append((token.start(), token.end(), _match_case(new, token.group(0))))
    return edits
  m = mentions[0]
  if (predicate := _PREDICATE.search(src.text, m.start, m.end)):  # "The heart is [markedly] enlarged"
    return [(predicate.start(), predicate.start(), "markedly ")]
  at = _phrase_start(src.text, m)
  word = "severe" if finding in _DEGREE else "large"
  if not reports.TAG.sub("", src.text[m.sentence[0]:at]).strip() and src.text[at].isupper():
    return [(at, at + 1, word.capitalize() + " " + src.text[at].lower())]  # sentence start
  return [(at, at, word + " ")]


def _severity(src: _Labelled, rng: np.random.Generator,
              avoid: frozenset[str] = frozenset()) -> tuple[str, str] | None:
  """Changes a stated grade to the opposite one, or adds a grade where none is stated."""
  candidates = [f for f in labels_lib.FINDINGS
                if src.findings.labels.get(f) == 1 and f not in ("No Finding", "Support Devices")]
  for finding in _shuffled(candidates, rng):
    edits = _grade_edits(src, finding)
    new_text = _edit(src.text, edits)
    after = labels_lib.extract(new_text)
    old = src.findings.severity.get(finding)
    if edits and new_text not in avoid and after.severity.get(finding) not in (None, old) and \
        _others_same(src.findings, after, finding, "severity"):
      return new_text, f"severity: {old or 'none stated'} -> {after.severity[finding]} ({finding})"
  return None


# One sentence per finding, stating it with laterality/severity where that applies; the fields are
# filled at random (capitalized names give capitalized values). Used for false findings.
_TEMPLATES = {
    "Enlarged Cardiomediastinum": ("The mediastinum is widened.",),
    "Cardiomegaly": ("The heart is {deg} enlarged.", "{Grade} cardiomegaly."),
    "Lung Opacity": ("Patchy airspace opacity in the {side} {zone} lung.",),
    "Lung Lesion": ("There is a {mm} mm nodule in the {side} {zone} lobe.", "{Side} {zone} lobe mass."),
    "Edema": ("{Grade} pulmonary edema.",),
    "Consolidation": ("Focal consolidation in the {side} {zone} lobe.",),
    "Pneumonia": ("Findings consistent with {side} {zone} lobe pneumonia.",),
    "Atelectasis": ("{Side} basilar atelectasis.",),
    "Pneumothorax": ("There is a {size} {side} pneumothorax.",),
    "Pleural Effusion": ("There is a {size} {side} pleural effusion.",),
    "Pleural Other": ("{Side} apical pleural thickening.",),
    "Fracture": ("Acute fracture of the {side} {nth} rib.",),
    "Support Devices": ("{Side} chest wall pacemaker with leads in the right atrium and right ventricle.",
                        "Endotracheal tube tip 4 cm above the carina."),
}
_CHOICES = {"side": ("left", "right"), "zone": ("upper", "lower"), "size": ("small", "moderate", "large"),
            "deg": ("mildly", "moderately", "markedly"), "grade": ("mild", "moderate", "severe"),
            "mm": tuple(str(n) for n in range(5, 25)), "nth": ("fourth", "fifth", "sixth", "seventh")}


def _fill(template: str, rng: np.random.Generator) -> str:
  values = {k: v[int(rng.integers(len(v)))] for k, v in _CHOICES.items()}
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


# The denial of a sentence ("No X.", "There is no X", "X is not seen", "The heart is not enlarged"),
# and the "normal" of a heart or mediastinum stated normal.
_DENIAL = re.compile(r"^(?P<lead>\s*(?:\[[A-Z][A-Z _/()-]*\]\s*)?)(?P<there>there (?:is|are) )?no ", re.I)
_NOT = re.compile(r"\b(is|are) not (?=(?:seen|identified|present|evident|visualized|demonstrated|appreciated|"
                  r"detected|enlarged|widened)\b)", re.I)
_NORMAL_WORD = re.compile(r"\b(?:within normal limits|normal|unremarkable)\b", re.I)
_ABNORMAL_WORD = {"Cardiomegaly": "enlarged", "Enlarged Cardiomediastinum": "widened"}


def _undo_denial(src: _Labelled, m: labels_lib.Mention) -> tuple[int, int, str] | None:
  """The one- or two-word edit that makes mention `m`'s sentence state it: "No pneumothorax." ->
  "Pneumothorax.", "is not seen" -> "is seen", "Heart size normal" -> "Heart size enlarged"."""
  start, end = m.sentence
  sentence = src.text[start:end]
  if (d := _DENIAL.match(sentence)):
    rest = sentence[d.end():]
    new = d.group("there") + rest if d.group("there") else rest[:1].upper() + rest[1:]
    return start, end, d.group("lead") + new
  if (n := _NOT.search(sentence)):
    return start + n.start(), start + n.end(), n.group(1) + " "
  if m.finding in _ABNORMAL_WORD and (token := src.nearest(_NORMAL_WORD, m)) is not None:
    return token.start(), token.end(), _match_case(_ABNORMAL_WORD[m.finding], token.group(0))
  return None


def _assert_denied(src: _Labelled, rng: np.random.Generator,
                   avoid: frozenset[str] = frozenset()) -> tuple[str, str] | None:
  """States a finding the report denies by undoing the denial in every sentence that denies it.
  A denial shared by a list ("no effusion or pneumothorax") would be undone for every item: the
  re-labelling check rejects that, as it must (two errors)."""
  for finding in _shuffled([f for f in _NEGATED if src.findings.labels.get(f) == 0], rng):
    by_sentence = {m.sentence: m for m in src.mentions if m.finding == finding and m.status == 0}
    edits = [_undo_denial(src, m) for _, m in sorted(by_sentence.items())]
    if not edits or None in edits:
      continue
    new_text = _edit(src.text, edits)
    after = labels_lib.extract(new_text)
    if new_text not in avoid and after.labels.get(finding) == 1 and \
        _others_same(src.findings, after, finding, "labels"):
      return new_text, f"false finding: asserted {finding}, which the report denies"
  return None


def _false_finding(src: _Labelled, rng: np.random.Generator,
                   avoid: frozenset[str] = frozenset()) -> tuple[str, str] | None:
  """States a finding the report denies (a one-word flip of its denial, preferred: that is the error
  an encoder must learn to see) or, failing that, one it does not mention (an added sentence)."""
  if (flipped := _assert_denied(src, rng, avoid)) is not None:
    return flipped
  for finding in _shuffled([f for f in _TEMPLATES if f not in src.findings.labels], rng):
    templates = _TEMPLATES[finding]
    sentence = _fill(templates[int(rng.integers(len(templates)))], rng)
    new_text = _insert_sentence(src.text, sentence, rng)
    after = labels_lib.extract(new_text)
    if new_text not in avoid and after.labels.get(finding) == 1 and \
        _others_same(src.findings, after, finding, "labels"):
      return new_text, f"false finding: added {sentence!r} ({finding})"
  return None


_NEGATED = {
    "Enlarged Cardiomediastinum": "The mediastinum is not widened.", "Cardiomegaly": "The heart is not enlarged.",
    "Lung Opacity": "No focal airspace opacity.", "Lung Lesion": "No pulmonary nodule or mass.",
    "Edema": "No pulmonary edema.", "Consolidation": "No focal consolidation.", "Pneumonia": "No pneumonia.",
    "Atelectasis": "No atelectasis.", "Pneumothorax": "No pneumothorax.", "Pleural Effusion": "No pleural effusion.",
    "Pleural Other": "No pleural thickening.", "Fracture": "No fracture.", "Support Devices": "No support devices.",
}
_THERE_IS = re.compile(r"^there (is|are) (?:an? |some |again |also |now |still )*", re.I)
_IS_PREDICATE = re.compile(r"\b(is|are|appears|remains)\s+(?:\w+ly\s+)?(enlarged|widened|increased)\b", re.I)
_CLAUSE_WORD = re.compile(r"\b(?:with|and|or|but|in|of|no|not)\b", re.I)


def _negate_sentence(sentence: str, finding: str) -> str:
  """The sentence saying the opposite: "There is a small X" -> "There is no X", "The heart is mildly
  enlarged" -> "The heart is not enlarged", a short noun phrase "Small left X." -> "No left X.";
  anything more complex becomes the finding's plain negative sentence."""
  if (there := _THERE_IS.match(sentence)):
    rest = " ".join(_SEVERITY_TOKEN.sub("", sentence[there.end():]).split())
    return f"There {there.group(1).lower()} no {rest}"
  if (m := _IS_PREDICATE.search(sentence)):
    return sentence[:m.start()] + f"{m.group(1)} not {m.group(2)}" + sentence[m.end():]
  rest = " ".join(_SEVERITY_TOKEN.sub("", sentence).split())
  if len(sentence.split()) <= 6 and not _CLAUSE_WORD.search(sentence) and rest:
    return "No " + rest[0].lower() + rest[1:]
  return _NEGATED[finding]


def _false_negation(src: _Labelled, rng: np.random.Generator,
                    avoid: frozenset[str] = frozenset()) -> tuple[str, str] | None:
  """Denies a finding the report states: every sentence stating it is rewritten as its negation."""
  for finding in _shuffled([f for f in _NEGATED if src.findings.labels.get(f) == 1], rng):
    edits = []
    for start, end in sorted({m.sentence for m in src.positive_mentions(finding)}):
      sentence = src.text[start:end]
      lead = re.match(r"\s*(?:\[[A-Z][A-Z _/()-]*\]\s*)?", sentence).group(0)  # keep spacing and a tag
      edits.append((start, end, lead + _negate_sentence(sentence[len(lead):].strip(), finding)))
    new_text = _edit(src.text, edits)
    after = labels_lib.extract(new_text)
    if new_text not in avoid and after.labels.get(finding) == 0 and \
        _others_same(src.findings, after, finding, "labels"):
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
  src = _Labelled.of(text)
  for kind in [error_type] if error_type else _shuffled(list(ERROR_TYPES), rng):
    result = _INJECT[kind](src, rng)
    if result is not None:
      return Variant(result[0], kind, result[1])
  return None


def _weighted_order(types: Sequence[str], weights: Mapping[str, float] | None,
                    rng: np.random.Generator) -> list[str]:
  """`types` in a random order where heavier types tend to come first (weighted sampling without
  replacement, Efraimidis-Spirakis keys u ** (1 / w)); weight 0 drops a type."""
  w = np.array([1.0 if weights is None else float(weights.get(t, 0.0)) for t in types])
  if (w < 0).any():
    raise ValueError(f"error-type weights must be >= 0, got {dict(zip(types, w))}")
  keys = rng.random(len(types)) ** (1.0 / np.maximum(w, 1e-12))
  return [types[i] for i in np.argsort(-keys, kind="stable") if w[i] > 0]


def restyled(text: str, found: Sequence[Variant], restyle: Callable[[str], str | None]) -> list[Variant]:
  """One-error variants of `text` rewritten in the style of `restyle(text)` (abbreviated, shorthand).

  A restyled variant is kept only if it still states what the variant states (re-labelled through
  the expansion, so the error survived the rewrite) and differs from `restyle(text)` and from the
  variants kept before it.
  """
  seen, out = {restyle(text)}, []
  for v in found:
    new = restyle(v.text)
    if new is None or new in seen or meaning(new) != meaning(v.text):
      continue
    seen.add(new)
    out.append(dataclasses.replace(v, text=new))
  return out


def hard_negatives(text: str, rng: np.random.Generator, n: int = 3, types: Sequence[str] = ERROR_TYPES,
                   weights: Mapping[str, float] | None = None,
                   restyle: Callable[[str], str | None] | None = None) -> list[Variant]:
  """Up to `n` distinct one-error variants of `text`, of different error types where possible.

  The MC4 form of the paper's error discrimination (the correct text vs three one-error variants),
  and several hard negatives per training query. Types are tried in a random order drawn with
  `weights` (type -> relative weight; missing or 0 excludes a type): one variant per type first;
  when fewer than `n` types apply, further rounds draw other variants of the types that do (another
  finding, another template) until `n` texts or a round that adds none.

  Args:
    types: the error types allowed (a subset of ERROR_TYPES).
    weights: e.g. {"laterality": 1, "severity": 1, "false_negation": 1, "false_finding": 0.1} to
      prefer one-word flips of a sentence, which are what an encoder learns one-word errors from
      (a "false finding" adds a whole sentence); None weighs the given types equally.
    restyle: when the caller pairs the variants with a rewrite of `text` (e.g. `reports.abbreviate`,
      or `functools.partial(shorthand.telegraphic, seed=s)`), the errors are injected into `text`
      and each variant is rewritten the same way (see `restyled`), so it differs from the rewrite
      of `text` only where the error is.
  """
  unknown = set(types) - set(_INJECT)
  if unknown:
    raise ValueError(f"unknown error type(s) {sorted(unknown)}; known: {', '.join(ERROR_TYPES)}")
  weights = None if weights is None else {t: weights.get(t, 0.0) for t in types}
  src = _Labelled.of(text)
  found: list[Variant] = []
  seen = {text, restyle(text) if restyle is not None else text}
  raw = {text}  # the variants found so far: each injector looks for another one
  for _ in range(n):
    added = False
    for kind in _weighted_order(list(types), weights, rng):
      if len(found) == n:
        break
      result = _INJECT[kind](src, rng, frozenset(raw))
      if result is None:
        continue
      raw.add(result[0])
      new = result[0] if restyle is None else restyle(result[0])
      if new is None or new in seen or (restyle is not None and meaning(new) != meaning(result[0])):
        continue
      seen.add(new)
      found.append(Variant(new, kind, result[1]))
      added = True
    if len(found) == n or not added:
      break
  return found
