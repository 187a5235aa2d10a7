"""Telegraphic shorthand: report sentences rewritten the way a radiologist jots a quick note.

    "There is a small right pleural effusion."  -> "Sm R pl eff."
    "The heart is normal in size."              -> "Heart nl size." / "Heart size nl." / "Heart nl in size."
    "No pneumothorax is seen."                  -> "No PTX." / "No PTX seen."

A sentence is expanded first (`reports.expand`, so "No PTX is seen" reads like "No pneumothorax is
seen"), rewritten by a few structural rules that drop only words that state no finding (articles,
"there is", the copula, "is seen", "evidence of"), then abbreviated with the full lexicon
(`reports.abbreviate`). Sentences no rule fits (clauses, past tense, "which") are only abbreviated:
guessing at their structure is how a rewrite would change what they say.

Every rewrite is checked by re-labelling (`labels.extract`) of expanded text, since the labeler
reads words, not shorthand: each rewritten sentence must keep every label and attribute (side,
grade, zone, sub-type) of its source, else that sentence is only abbreviated; the whole result must
keep those of the whole input, else there is no variant (None).

The choice between equivalent forms is a pure function of (seed, sentence), not a draw from a
shared stream: restyling a one-error variant of a report with the same seed rewrites every
untouched sentence exactly as before, so it differs from the restyled report only where the error
is (the MC4 form of hard negatives, see `variants.hard_negatives(restyle=...)`).
"""
from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from data_pipelines import labels
from data_pipelines import reports

_LIST_MARKER = re.compile(r"^\(?\d{1,2}[.)]\s+")
_END = re.compile(r"\s*([.!?]+)\s*$")
# Copulas and verbs whose tense or clause structure the rules do not model: a sentence with any of
# these (besides its one "is"/"are") keeps its structure.
_CLAUSE = re.compile(r"\b(?:was|were|has|have|had|been|be|being|which|that|who|whose|when|if|although|though|"
                     r"but|because|however|whereas|while|since|may|might|could|would|should|can|cannot)\b|[;:]",
                     re.I)
_COPULA = re.compile(r"\b(?:is|are)\b", re.I)
_SEEN = r"(?:seen|identified|present|noted|evident|demonstrated|visualized|appreciated|detected|observed)"
_THERE_IS = re.compile(r"^there (?:is|are) (?:(?:a|an|some) (?!(?:few|little|bit)\b))?(?P<rest>.+)$", re.I)
_NO_X_SEEN = re.compile(r"^no (?P<x>[^,;]+?) (?:is|are) " + _SEEN + r"$", re.I)
_X_NOT_SEEN = re.compile(r"^(?:the )?(?P<x>[^,;]+?) (?:is|are) not " + _SEEN + r"$", re.I)
_EVIDENCE = re.compile(r"\b(no|without) (definite |convincing )?(?:radiographic )?evidence (?:of|for) ", re.I)
_SUBJECT_IS = re.compile(r"^(?:the )?(?P<s>[\w ,/-]+?) (?:is|are) (?P<p>.+)$", re.I)
_SEEN_PREDICATE = re.compile(r"^" + _SEEN + r"(?: (?P<rest>(?:in|at|on|within|along|over|overlying|projecting|"
                             r"posterior|anterior|lateral|medial|adjacent|near|throughout|bilaterally)\b.*))?$",
                             re.I)
# A subject that is a pronoun or a negation refers elsewhere or is handled by the rules above.
_NOT_SUBJECT = re.compile(r"^(?:it|this|these|those|there|here|no|not)\b", re.I)
# Articles go, except where they change the quantity ("a few" is some, "few" is hardly any).
_ARTICLE = re.compile(r"(?<![\w/-])(?:the|a|an) (?!(?:few|little|bit)\b)")
_ARTICLE_AT_START = re.compile(r"^(?:the|a|an) (?!(?:few|little|bit)\b)", re.I)


def _choice_rng(seed: int, sentence: str) -> np.random.Generator:
  digest = hashlib.blake2b(f"{seed}\x00{sentence}".encode(), digest_size=8).digest()
  return np.random.default_rng(int.from_bytes(digest, "big"))


def _mid(phrase: str) -> str:
  """A phrase moved off the sentence start: its capital goes unless it is an acronym ("PICC")."""
  first = phrase.split(" ", 1)[0]
  return phrase if first.isupper() and len(first) > 1 else phrase[:1].lower() + phrase[1:]


def _subject_predicate(body: str, rng: np.random.Generator) -> str | None:
  """"The heart is normal in size" -> "heart size normal" (or an equivalent order); None when the
  sentence is not one short subject, one "is"/"are" and a predicate."""
  if len(_COPULA.findall(body)) != 1 or _CLAUSE.search(body):
    return None
  m = _SUBJECT_IS.match(body)
  if m is None or _NOT_SUBJECT.match(m.group("s")) or len(m.group("s").split()) > 6:
    return None
  subject, predicate = m.group("s"), m.group("p")
  if predicate.lower() == "normal in size":
    forms = ("{s} size normal", "{s} normal size", "{s} normal in size")
    return forms[int(rng.integers(len(forms)))].format(s=subject)
  if (seen := _SEEN_PREDICATE.match(predicate)):  # "Granuloma is seen in the RUL" -> "Granuloma in RUL"
    return f"{subject} {seen.group('rest')}" if seen.group("rest") else subject
  return f"{subject} {predicate}"


def _restructure(body: str, rng: np.random.Generator) -> str:
  """The structural rules on one expanded sentence body (no list marker, no final stop)."""
  body = _EVIDENCE.sub(lambda m: m.group(1) + " " + (m.group(2) or ""), body)
  if (m := _THERE_IS.match(body)):
    body = m.group("rest")
  if (m := _NO_X_SEEN.match(body)):
    body = ("No {x}", "No {x} seen")[int(rng.integers(2))].format(x=_mid(m.group("x")))
  elif (m := _X_NOT_SEEN.match(body)) and len(m.group("x").split()) <= 5 and not _CLAUSE.search(body):
    body = ("No {x}", "{x} not seen")[int(rng.integers(2))].format(x=_mid(m.group("x")))
  elif (rewritten := _subject_predicate(body, rng)) is not None:
    body = rewritten
  body = _ARTICLE.sub("", _ARTICLE_AT_START.sub("", body))
  return body[:1].upper() + body[1:]


@functools.lru_cache(maxsize=1 << 16)
def meaning(text: str) -> labels.Findings:
  """What a text states, as the labeler reads it: the labels of its expansion, since the labeler
  reads words, not shorthand ("sm R pl eff"). Cached (restyling negatives asks again and again), so
  the result is shared: do not mutate it."""
  return labels.extract(reports.expand(text))


@functools.lru_cache(maxsize=1 << 16)
def telegraphic_sentence(sentence: str, seed: int = 0) -> str:
  """One sentence in shorthand; only abbreviated when the structural rewrite would change a label.
  Cached: the sentences of a report's one-error variants are mostly the report's own."""
  sentence = sentence.strip()
  marker = _LIST_MARKER.match(sentence)
  prefix = marker.group(0) if marker else ""
  body = reports.expand(sentence[len(prefix):])
  end = _END.search(body)
  stop = ("?" if "?" in end.group(1) else ".") if end else ""  # "?" is an uncertainty cue: keep it
  body = body[:end.start()] if end else body
  if not body.strip():
    return sentence
  rewritten = reports.abbreviate(prefix + _restructure(body, _choice_rng(seed, sentence)) + stop)
  if meaning(rewritten) == meaning(sentence):
    return rewritten
  return reports.abbreviate(sentence)


def telegraphic(text: str, seed: int = 0) -> str | None:
  """A report (tagged or plain) in telegraphic shorthand, sentence by sentence within each section.

  Returns None when the result would not state exactly the findings of `text` (re-labelled, see the
  module docstring). Deterministic in (text, seed); the same seed rewrites a sentence the same way
  in any report.
  """
  out = []
  for tag, body in reports.split_tagged(text):
    body = " ".join(telegraphic_sentence(s, seed) for s in reports.split_sentences(body))
    out.append(f"[{tag}] {body}" if tag else body)
  result = " ".join(s for s in out if s)
  return result if meaning(result) == meaning(text) else None
