"""Text tasks of LLM2VEC4CXR: supervised contrastive training examples and evaluation sets.

Both are built from prepared report rows (`pipelines.read_split`: mappings with "report_tagged",
"report", "findings", "impression"), numpy only. Everything is deterministic in (rows, seed), and
the randomness of each example is seeded by (seed, task, its text) alone, so adding or removing
rows changes no other row's examples.

Training (`training_examples`, `TaskBatchSampler`): llm2vec's supervised recipe, where a query
carries a task instruction, documents carry none, every example has hard negatives, and each global
batch holds one task. The hard negatives of an example are one-error variants of its positive in
the positive's own style (`variants.hard_negatives` / `variants.restyled`): they differ from it in
one clinical fact only (the MC4 form); impression -> report also gets a mined other report.

Evaluation (`eval_sets`): plain data, scored by the caller from embeddings (see `RetrievalSet` and
`ChoiceSet` for exactly how). A query is dropped when its answer is ambiguous (the same query text
has different answers) or when the query text itself is one of the candidates; candidates are
de-duplicated. Texts are compared by `text_key` (case and whitespace folded).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from data_pipelines import mining
from data_pipelines import reports
from data_pipelines import shorthand
from data_pipelines import variants

# Queries of one-word flips teach one-word errors; a "false finding" (an added sentence) taught an
# encoder nothing about them in a calibration run, so it only fills in where no flip applies.
DEFAULT_ERROR_WEIGHTS = {"laterality": 1.0, "severity": 1.0, "false_negation": 1.0, "false_finding": 0.1}

INSTRUCTIONS = {
    "summarization": "Retrieve the impression that summarizes these chest X-ray findings",
    "abbreviated_to_expanded": "Given a chest X-ray report written with abbreviations, retrieve the same "
                               "report with every abbreviation written out",
    "expanded_to_abbreviated": "Given a chest X-ray report, retrieve the same report written with "
                               "radiology abbreviations",
    "abbreviated_to_expanded_sentence": "Given a chest X-ray report sentence written with abbreviations, "
                                        "retrieve the same sentence with every abbreviation written out",
    "expanded_to_abbreviated_sentence": "Given a chest X-ray report sentence, retrieve the same sentence "
                                        "written with radiology abbreviations",
    "shorthand_to_report": "Given a radiologist's shorthand note, retrieve the chest X-ray report that "
                           "states the same findings",
    "report_to_shorthand": "Given a chest X-ray report, retrieve the shorthand note that states the same "
                           "findings",
    "shorthand_to_sentence": "Given a line of radiologist's shorthand, retrieve the report sentence that "
                             "states the same finding",
    "impression_to_report": "Given the impression of a chest X-ray report, retrieve the full report",
    "reordered_to_report": "Given a chest X-ray report, retrieve the report that states exactly the same "
                           "findings",
}
TRAIN_TASKS = tuple(INSTRUCTIONS)
EVAL_SETS = ("findings_to_impression", "abbreviated_to_expanded_sentence", "expanded_to_abbreviated_sentence",
             "abbreviated_to_expanded_report", "expanded_to_abbreviated_report", "impression_to_report",
             "error_mc4")


def text_key(text: str) -> str:
  """The form texts are compared in: case and whitespace do not make two texts different."""
  return " ".join(text.split()).casefold()


def _hash(*parts: object) -> int:
  return int.from_bytes(hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _rng(seed: int, *parts: object) -> np.random.Generator:
  return np.random.default_rng([seed, _hash(*parts)])


@dataclasses.dataclass(frozen=True)
class _Report:
  text: str  # tagged when the row has sections
  findings: str
  impression: str


def _report(row: Mapping) -> _Report:
  findings, impression = row.get("findings") or "", row.get("impression") or ""
  text = row.get("report_tagged") or row.get("report") or reports.Report(findings, impression).tagged()
  return _Report(text, findings, impression)


def _sentences(r: _Report) -> list[str]:
  bodies = [b for b in (r.findings, r.impression) if b] or [r.text]
  return [s for b in bodies for s in reports.split_sentences(b)]


# ---- Training --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
  """One supervised contrastive example. The query is encoded with `instruction` (llm2vec:
  "{instruction}; !@#$%^&*(){query}"), the positive and the negatives without. `negatives` are
  one-error variants of the positive (`negative_kinds` their error types), most preferred first."""
  task: str
  instruction: str
  query: str
  positive: str
  negatives: tuple[str, ...]
  negative_kinds: tuple[str, ...]


@dataclasses.dataclass
class _Builder:
  seed: int
  n_negatives: int
  weights: Mapping[str, float] | None
  wanted: frozenset[str]

  def any(self, *tasks: str) -> bool:
    return not self.wanted.isdisjoint(tasks)

  def negatives(self, text: str, task: str) -> list[variants.Variant]:
    return variants.hard_negatives(text, _rng(self.seed, "negatives", task, text), self.n_negatives,
                                   weights=self.weights)

  def telegraphic_seed(self, text: str) -> int:
    return _hash(self.seed, "telegraphic", text) >> 33


def _report_examples(r: _Report, b: _Builder) -> Iterator[tuple[str, str, str, list[variants.Variant]]]:
  """(task, query, positive, negatives) of one report for the report-level tasks."""
  x = r.text
  impression_errors = []
  if r.findings and r.impression and b.any("summarization", "impression_to_report"):
    impression_errors = b.negatives(r.impression, "impression")
  if impression_errors:
    yield "summarization", r.findings, r.impression, impression_errors
  if impression_errors and reports.TAG.search(x):
    # The query states only the impression, so the negatives are the report with an error in its
    # impression: one in the findings alone would be a second correct answer.
    query = f"[{reports.IMPRESSION}] {r.impression}"
    with_error = [dataclasses.replace(v, text=reports.Report(r.findings, v.text).tagged()) for v in impression_errors]
    yield "impression_to_report", query, x, [v for v in with_error if text_key(v.text) != text_key(x)]
  if not b.any("abbreviated_to_expanded", "expanded_to_abbreviated", "shorthand_to_report", "report_to_shorthand",
               "reordered_to_report"):
    return
  errors = b.negatives(x, "report")  # injected once, restyled per task
  abbreviated, expanded = reports.abbreviate(x), reports.expand(x)
  if text_key(abbreviated) != text_key(expanded) and b.any("abbreviated_to_expanded", "expanded_to_abbreviated"):
    yield "abbreviated_to_expanded", abbreviated, expanded, variants.restyled(x, errors, reports.expand)
    yield "expanded_to_abbreviated", expanded, abbreviated, variants.restyled(x, errors, reports.abbreviate)
  seed = b.telegraphic_seed(x)
  short = shorthand.telegraphic(x, seed) if b.any("shorthand_to_report", "report_to_shorthand") else None
  if short is not None and text_key(short) != text_key(x):
    yield "shorthand_to_report", short, x, errors
    yield "report_to_shorthand", x, short, variants.restyled(x, errors, functools.partial(shorthand.telegraphic,
                                                                                          seed=seed))
  reordered = variants.reorder_sentences(x, _rng(b.seed, "reordered", x))
  if text_key(reordered) != text_key(x):
    yield "reordered_to_report", reordered, x, errors


def _sentence_examples(s: str, b: _Builder) -> Iterator[tuple[str, str, str, list[variants.Variant]]]:
  errors = b.negatives(s, "sentence")
  abbreviated, expanded = reports.abbreviate(s), reports.expand(s)
  if text_key(abbreviated) != text_key(expanded):
    yield "abbreviated_to_expanded_sentence", abbreviated, expanded, variants.restyled(s, errors, reports.expand)
    yield ("expanded_to_abbreviated_sentence", expanded, abbreviated,
           variants.restyled(s, errors, reports.abbreviate))
  short = shorthand.telegraphic(s, b.telegraphic_seed(s))
  if short is not None and text_key(short) != text_key(s):
    yield "shorthand_to_sentence", short, s, errors


def training_examples(rows: Iterable[Mapping], seed: int = 0, *, tasks: Sequence[str] = TRAIN_TASKS,
                      n_negatives: int = 3, error_weights: Mapping[str, float] | None = DEFAULT_ERROR_WEIGHTS,
                      min_negatives: int = 1, exclude: Iterable[str] = (), mining_pool: int = 8192) -> list[Example]:
  """Supervised examples of `tasks` (names in INSTRUCTIONS) from the rows of one split.

  Examples come task by task, in row order (sentences in first-occurrence order); an example whose
  (query, positive) repeats an earlier one of its task is dropped, as is one with fewer than
  `min_negatives` hard negatives or whose query or positive is in `exclude` (texts, compared by
  `text_key`; negatives in it are dropped). Pass `eval_texts(eval_sets(test_rows))` to keep every
  evaluated text out of training, including the stock sentences and exact duplicate reports that
  real splits share; without it, only the rows given are used, nothing else.
  impression_to_report examples get one more negative, first: another report of the rows, mined
  (`_with_other_reports`, from a sample of `mining_pool` reports).
  """
  unknown = set(tasks) - set(INSTRUCTIONS)
  if unknown:
    raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {', '.join(INSTRUCTIONS)}")
  builder = _Builder(seed, n_negatives, error_weights, frozenset(tasks))
  excluded = {text_key(t) for t in exclude}
  wanted = set(tasks)
  by_task: dict[str, list[Example]] = {t: [] for t in tasks}
  seen: set[tuple[str, str, str]] = set()

  def add(task: str, query: str, positive: str, negatives: list[variants.Variant]) -> None:
    key = (task, text_key(query), text_key(positive))
    negatives = [v for v in negatives if text_key(v.text) not in excluded]
    if task not in wanted or key in seen or len(negatives) < min_negatives or key[1] in excluded or \
        key[2] in excluded:
      return
    seen.add(key)
    by_task[task].append(Example(task, INSTRUCTIONS[task], query, positive,
                                 tuple(v.text for v in negatives), tuple(v.kind for v in negatives)))

  report_level = wanted - {t for t in wanted if t.endswith("_sentence")}
  sentences: dict[str, str] = {}
  pool: dict[str, _Report] = {}
  for row in rows:
    r = _report(row)
    if "impression_to_report" in wanted and text_key(r.text) not in excluded:
      pool.setdefault(text_key(r.text), r)  # every report, impression-only ones too: the mining pool
    if report_level:
      for example in _report_examples(r, builder):
        add(*example)
    sentences.update((text_key(s), s) for s in _sentences(r) if text_key(s) not in sentences)
  if wanted - report_level:
    for s in sentences.values():
      for example in _sentence_examples(s, builder):
        add(*example)
  if by_task.get("impression_to_report"):
    by_task["impression_to_report"] = _with_other_reports(by_task["impression_to_report"], list(pool.values()),
                                                          seed, pool_size=mining_pool)
  return [e for t in tasks for e in by_task[t]]


def _with_other_reports(examples: list[Example], pool: list[_Report], seed: int, *, pool_size: int) -> list[Example]:
  """impression_to_report examples with a mined first negative: the other report of the split
  (from a seeded sample of `pool_size`) most like the query (`mining.neighbours`), never one with
  the same impression, which would be a second right answer. Evaluation ranks an impression against
  every report of a split, and what outranks the right one there is such other reports (short,
  impression-only ones above all), which the one-error variants of its own report never show."""
  if len(pool) > pool_size:
    pool = [pool[i] for i in sorted(_rng(seed, "mining pool").choice(len(pool), pool_size, replace=False))]
  positive = [text_key(e.positive) for e in examples]
  impression = [mining.word_key(e.query.removeprefix(f"[{reports.IMPRESSION}]")) for e in examples]
  pool_text, pool_impression = [text_key(r.text) for r in pool], [mining.word_key(r.impression) for r in pool]

  def allowed(i: int, j: int) -> bool:
    return pool_text[j] != positive[i] and pool_impression[j] != impression[i]

  mined = mining.neighbours([e.query for e in examples], [r.text for r in pool], allowed)
  return [e if j is None else dataclasses.replace(e, negatives=(pool[j].text,) + e.negatives,
                                                   negative_kinds=("other_report",) + e.negative_kinds)
          for e, j in zip(examples, mined)]


class TaskBatchSampler:
  """Batches of example indices, every batch from one task (llm2vec: one dataset per global batch).

  Per epoch each task's examples are shuffled and packed into batches of `batch_size`. With
  mixture="proportional" (llm2vec's) the batches of all tasks are then shuffled together, so tasks
  are drawn in proportion to their size; with "balanced" they are dealt in rounds, one batch of
  every task that has one left per round (in a shuffled task order), so that a short run sees
  every task equally often — a small task (findings -> impression: stock impressions conflict
  and pack into few batches) would otherwise barely appear in a few hundred steps.
  Every row's positive and negatives are candidates for every query of the batch (the gathered
  hard-negative loss), so a batch never holds two examples with the same query, nor an example
  whose positive equals another's positive or negative: such an example waits for a later batch;
  at most `max_carry` wait at once (the oldest are left for this epoch), which bounds the work when
  one text (a stock impression) is shared by more examples than there are batches. A task's last
  incomplete batch is dropped unless `drop_remainder` is False. Deterministic in (seed, epoch);
  the state of an iteration is its step number (`iterate(start_step)`).
  """

  def __init__(self, examples: Sequence[Example], batch_size: int, seed: int = 0, *, drop_remainder: bool = True,
               max_carry: int | None = None, mixture: str = "proportional"):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if mixture not in ("proportional", "balanced"):
      raise ValueError(f"mixture={mixture!r}: proportional | balanced")
    self.mixture = mixture
    self.batch_size, self.seed, self.drop_remainder = batch_size, seed, drop_remainder
    self.max_carry = 8 * batch_size if max_carry is None else max_carry
    by_task: dict[str, list[int]] = collections.defaultdict(list)
    for i, e in enumerate(examples):
      by_task[e.task].append(i)
    self._tasks = {t: np.asarray(ids) for t, ids in sorted(by_task.items())}
    self._keys = [(text_key(e.query), text_key(e.positive), frozenset(map(text_key, e.negatives)))
                  for e in examples]

  def _pack(self, order: np.ndarray) -> list[np.ndarray]:
    batches: list[np.ndarray] = []
    pending, carried = collections.deque(order.tolist()), collections.deque()
    while pending or carried:
      batch, queries, positives, documents = [], set(), set(), set()
      retry, carried = carried, collections.deque()
      while len(batch) < self.batch_size and (retry or pending):
        i = retry.popleft() if retry else pending.popleft()
        query, positive, negatives = self._keys[i]
        if query in queries or positive in documents or not negatives.isdisjoint(positives):
          carried.append(i)
          continue
        batch.append(i)
        queries.add(query)
        positives.add(positive)
        documents.update(negatives | {positive})
      carried.extend(retry)
      while len(carried) > self.max_carry:
        carried.popleft()
      if len(batch) < self.batch_size:
        if batch and not self.drop_remainder:
          batches.append(np.asarray(batch))
        break
      batches.append(np.asarray(batch))
    return batches

  def epoch(self, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: int arrays of `batch_size` indices into the examples."""
    rng = np.random.default_rng([self.seed, epoch])
    per_task = [self._pack(ids[rng.permutation(len(ids))]) for ids in self._tasks.values()]
    if self.mixture == "balanced":
      rounds = [[t[r] for t in per_task if r < len(t)] for r in range(max(map(len, per_task), default=0))]
      return [b for batches in rounds for b in (batches[i] for i in rng.permutation(len(batches)))]
    batches = [b for t in per_task for b in t]
    return [batches[i] for i in rng.permutation(len(batches))]

  def iterate(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """Batches without end, epoch after epoch, from global step `start_step` (to resume)."""
    step, epoch = 0, 0
    while True:
      batches = self.epoch(epoch)
      if not batches:
        raise ValueError("no complete batch: fewer conflict-free examples per task than batch_size")
      for batch in batches:
        if step >= start_step:
          yield batch
        step += 1
      epoch += 1

  def __iter__(self) -> Iterator[np.ndarray]:
    return self.iterate()


# ---- Evaluation ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
  """Instructed query -> candidate retrieval.

  Scoring: embed each query with `instruction` and each candidate without, cosine similarity
  S (Q, N); the rank of query i is the number of candidates j != answers[i] with S[i, j] >=
  S[i, answers[i]] (ties count against it); R@k = mean over queries of [rank < k]. Chance R@k is
  k / N (`chance`).
  """
  name: str
  instruction: str
  queries: tuple[str, ...]
  candidates: tuple[str, ...]
  answers: tuple[int, ...]  # per query, the index of its one correct candidate

  def chance(self, k: int = 1) -> float:
    return min(k, len(self.candidates)) / len(self.candidates) if self.candidates else 0.0


@dataclasses.dataclass(frozen=True)
class ChoiceSet:
  """Multiple choice (error discrimination, MC4): which option states what the query states?

  Scoring: embed each query with `instruction` and each option without; item i is correct when
  cosine(query i, options[i][answers[i]]) is strictly greater than for every other option of item i;
  accuracy = mean over items. Chance is 1 / number of options (`chance`). The query is a rewrite of
  the correct option (`query_kinds`: shorthand, abbreviated or reordered), never the same text; the
  other options are that option with one injected error each (`option_kinds`).
  """
  name: str
  instruction: str
  queries: tuple[str, ...]
  options: tuple[tuple[str, ...], ...]  # (Q, n_options)
  answers: tuple[int, ...]
  option_kinds: tuple[tuple[str, ...], ...]  # "correct" or the error type, per option
  query_kinds: tuple[str, ...]

  def chance(self) -> float:
    return 1.0 / len(self.options[0]) if self.options else 0.0


def _retrieval(name: str, instruction: str, pairs: Iterable[tuple[str, str]], pool: Iterable[str] = ()) -> RetrievalSet:
  """Candidates: the answers and `pool`, de-duplicated by `text_key`, in first-occurrence order.
  A query text with two different answers is ambiguous and dropped; so is a query text that is
  itself a candidate (its own answer would be trivial, a wrong one a trap)."""
  pairs = list(pairs)
  index: dict[str, int] = {}
  candidates: list[str] = []
  for text in [a for _, a in pairs] + list(pool):
    if text_key(text) not in index:
      index[text_key(text)] = len(candidates)
      candidates.append(text)
  answers: dict[str, set[int]] = {}
  first: dict[str, str] = {}
  for query, answer in pairs:
    answers.setdefault(text_key(query), set()).add(index[text_key(answer)])
    first.setdefault(text_key(query), query)
  kept = [(first[k], next(iter(a))) for k, a in answers.items() if len(a) == 1 and k not in index]
  return RetrievalSet(name, instruction, tuple(q for q, _ in kept), tuple(candidates), tuple(a for _, a in kept))


def _error_mc4(reports_: Sequence[_Report], seed: int, n_options: int) -> ChoiceSet:
  items = []
  for r in reports_:
    x = r.text
    rng = _rng(seed, "error_mc4", x)
    errors = variants.hard_negatives(x, rng, n_options - 1)  # the four error types weighed equally
    if len(errors) < n_options - 1:
      continue
    options = [x] + [v.text for v in errors]
    option_keys = {text_key(o) for o in options}
    rewrites = [("telegraphic shorthand", shorthand.telegraphic(x, _hash(seed, "telegraphic", x) >> 33)),
                ("abbreviated", reports.abbreviate(x)),
                ("reordered", variants.reorder_sentences(x, rng))]
    rewrites = [(k, q) for k, q in rewrites if q is not None and text_key(q) not in option_keys]
    if not rewrites:
      continue
    kind, query = rewrites[int(rng.integers(len(rewrites)))]
    order = rng.permutation(n_options)
    kinds = ["correct"] + [v.kind for v in errors]
    items.append((query, tuple(options[i] for i in order), int(np.argmin(order)), tuple(kinds[i] for i in order), kind))
  return ChoiceSet("error_mc4", INSTRUCTIONS["reordered_to_report"], tuple(i[0] for i in items),
                   tuple(i[1] for i in items), tuple(i[2] for i in items), tuple(i[3] for i in items),
                   tuple(i[4] for i in items))


def eval_sets(rows: Iterable[Mapping], seed: int = 0, *, n_options: int = 4) -> dict[str, RetrievalSet | ChoiceSet]:
  """The text-task evaluation sets (EVAL_SETS) of one split.

  - findings_to_impression: findings -> their impression among every impression of the split.
  - {abbreviated_to_expanded,expanded_to_abbreviated}_{sentence,report}: a sentence (every distinct
    sentence of the split) or report in its abbreviated form (`reports.abbreviate`) -> its expanded
    form (`reports.expand`) among all expanded ones, and the reverse; only texts whose two forms
    differ.
  - impression_to_report: "[IMPRESSION] …" -> its full report among every report of the split;
    only impressions no other report states (up to case and punctuation).
  - error_mc4: see `ChoiceSet`; reports where `n_options - 1` distinct errors apply.
  """
  rs = list({text_key(r.text): r for r in map(_report, rows)}.values())
  sentences = list({text_key(s): s for r in rs for s in _sentences(r)}.values())
  both = [r for r in rs if r.findings and r.impression]
  out: dict[str, RetrievalSet | ChoiceSet] = {
      "findings_to_impression": _retrieval("findings_to_impression", INSTRUCTIONS["summarization"],
                                           [(r.findings, r.impression) for r in both],
                                           [r.impression for r in rs if r.impression])}
  for level, texts in (("sentence", sentences), ("report", [r.text for r in rs])):
    forms = [(reports.abbreviate(t), reports.expand(t)) for t in texts]
    forms = [(a, e) for a, e in forms if text_key(a) != text_key(e)]
    for name, pairs in ((f"abbreviated_to_expanded_{level}", forms),
                        (f"expanded_to_abbreviated_{level}", [(e, a) for a, e in forms])):
      task = name[:-len("_report")] if level == "report" else name
      out[name] = _retrieval(name, INSTRUCTIONS[task], pairs)
  # An impression that another report states too, up to case and punctuation, has two right answers.
  said = collections.Counter(mining.word_key(r.impression) for r in rs if r.impression)
  out["impression_to_report"] = _retrieval(
      "impression_to_report", INSTRUCTIONS["impression_to_report"],
      [(f"[{reports.IMPRESSION}] {r.impression}", r.text) for r in both
       if reports.TAG.search(r.text) and said[mining.word_key(r.impression)] == 1],
      [r.text for r in rs])
  out["error_mc4"] = _error_mc4(rs, seed, n_options)
  return out


STATEMENT_SETS = ("abbreviated_to_expanded_sentence", "expanded_to_abbreviated_sentence", "error_mc4")


def statement_sets(items: Sequence[Mapping], seed: int = 0) -> dict[str, RetrievalSet | ChoiceSet]:
  """STATEMENT_SETS of hand-written statements, each {"expanded": text, "abbreviated": the same
  written as a radiologist's shorthand, "errors": the expanded text with one clinical error each}:
  abbreviated <-> expanded retrieval among all statements of that form, and MC4 with the
  abbreviated form as query and the expanded one among its errors as options (in an order
  seeded by (seed, statement)). Nothing here rewrites text, so the lexicon is not what is tested."""
  abbreviated, expanded = [i["abbreviated"] for i in items], [i["expanded"] for i in items]
  out: dict[str, RetrievalSet | ChoiceSet] = {
      "abbreviated_to_expanded_sentence": _retrieval("abbreviated_to_expanded_sentence",
                                                     INSTRUCTIONS["abbreviated_to_expanded_sentence"],
                                                     zip(abbreviated, expanded)),
      "expanded_to_abbreviated_sentence": _retrieval("expanded_to_abbreviated_sentence",
                                                     INSTRUCTIONS["expanded_to_abbreviated_sentence"],
                                                     zip(expanded, abbreviated))}
  n = min(len(i["errors"]) for i in items) + 1 if items else 0
  rows = []
  for item in items:
    options = [item["expanded"]] + list(item["errors"][:n - 1])
    order = _rng(seed, "statement", item["expanded"]).permutation(n)
    kinds = ["correct"] + ["error"] * (n - 1)
    rows.append((item["abbreviated"], tuple(options[i] for i in order), int(np.argmin(order)),
                 tuple(kinds[i] for i in order), "abbreviated"))
  out["error_mc4"] = ChoiceSet("error_mc4", INSTRUCTIONS["shorthand_to_sentence"], *(tuple(r[k] for r in rows)
                                                                                    for k in range(5)))
  return out


def eval_texts(sets: Mapping[str, RetrievalSet | ChoiceSet]) -> set[str]:
  """Every query, candidate and option of `sets`: pass as `training_examples(exclude=...)`."""
  texts: set[str] = set()
  for s in sets.values():
    texts.update(s.queries)
    texts.update(s.candidates if isinstance(s, RetrievalSet) else (o for item in s.options for o in item))
  return texts
