"""Text-task data: supervised training examples, the one-task batch sampler and the evaluation sets."""
import collections
import dataclasses

import numpy as np
import pytest

from data_pipelines import reports
from data_pipelines import text_tasks as tt
from data_pipelines import variants


def _row(findings, impression):
  report = reports.Report(findings, impression)
  return {"report": report.text(), "report_tagged": report.tagged(), "findings": findings, "impression": impression}


TRAIN = [
    _row("There is a small left pleural effusion. The heart is mildly enlarged. No pneumothorax.",
         "Small left pleural effusion. Mild cardiomegaly."),
    _row("Right lower lobe consolidation. The heart is normal in size. No pneumothorax is seen.",
         "Right lower lobe pneumonia."),
    _row("The lungs are clear. The heart is normal in size. No pleural effusion.", "No acute disease."),
    _row("Moderate right pneumothorax. No pleural effusion. Status post CABG.", "Moderate right pneumothorax."),
    _row("There is left basilar atelectasis. Small bilateral pleural effusions.",
         "Left basilar atelectasis and small effusions."),
]
TEST = [
    _row("There is a large right pleural effusion. No pneumothorax.", "Large right pleural effusion."),
    _row("Left upper lobe opacity. The heart is not enlarged.", "Left upper lobe pneumonia."),
    _row("The cardiomediastinal silhouette is within normal limits. No focal consolidation.", "Normal chest."),
    _row("Mild pulmonary edema. Small right pleural effusion.", "Mild congestive heart failure."),
]


@pytest.fixture(scope="module")
def examples():
  return tt.training_examples(TRAIN, seed=0)


def test_every_task_has_examples(examples):
  counts = collections.Counter(e.task for e in examples)
  assert set(counts) == set(tt.TRAIN_TASKS), counts
  for e in examples:
    assert e.instruction == tt.INSTRUCTIONS[e.task] and e.query and e.positive
    mined = e.negative_kinds[:1] == ("other_report",)  # impression_to_report's, first
    assert mined == (e.task == "impression_to_report")
    assert 1 <= len(e.negatives) - mined <= 3 and len(e.negative_kinds) == len(e.negatives)
    keys = {tt.text_key(t) for t in (e.positive, *e.negatives)}
    assert len(keys) == 1 + len(e.negatives)  # distinct, none equal to the positive
    assert tt.text_key(e.query) != tt.text_key(e.positive)
    # One clinical fact differs from the positive (for impression_to_report, in the impression the
    # query states: the report-level labels keep the first grade stated, which is the findings').
    part = (lambda t: reports.from_tagged(t).impression) if e.task == "impression_to_report" else (lambda t: t)
    for negative in e.negatives[mined:]:
      assert variants.meaning(part(negative)) != variants.meaning(part(e.positive))


def test_examples_pair_the_right_texts(examples):
  by_task = collections.defaultdict(list)
  for e in examples:
    by_task[e.task].append(e)
  first = TRAIN[0]
  summary = next(e for e in by_task["summarization"] if e.query == first["findings"])
  assert summary.positive == first["impression"]
  assert any(e.query.startswith("[FINDINGS] There is a sm L pl eff.") and "small left pleural effusion" in e.positive
             for e in by_task["abbreviated_to_expanded"])
  assert any(e.query == "There is a sm L pl eff." and e.positive == "There is a small left pleural effusion."
             for e in by_task["abbreviated_to_expanded_sentence"])
  assert any(e.query == "Sm L pl eff." for e in by_task["shorthand_to_sentence"])
  for e in by_task["impression_to_report"]:
    # The query states only the impression: every negative's impression differs from it.
    impression = reports.from_tagged(e.positive).impression
    assert e.query == f"[IMPRESSION] {impression}"
    assert all(reports.from_tagged(n).impression != impression for n in e.negatives)
  for e in by_task["report_to_shorthand"]:  # negatives in the positive's style: one sentence or an added one
    for negative in e.negatives:
      a, b = (reports.split_sentences(x) for x in (e.positive, negative))
      assert len(a) != len(b) or 1 <= sum(x != y for x, y in zip(a, b)) <= 2


def test_deterministic_and_independent_of_other_rows(examples):
  assert tt.training_examples(TRAIN, seed=0) == examples
  assert tt.training_examples(TRAIN, seed=1) != examples
  # Each example is seeded by its own text: a subset of rows gives a subset of the examples (but
  # for impression_to_report's mined negative, which is another row).
  report_level = [t for t in tt.TRAIN_TASKS if not t.endswith("_sentence")]
  unmined = lambda es: {dataclasses.replace(e, negatives=e.negatives[1:], negative_kinds=e.negative_kinds[1:])
                        if e.negative_kinds[:1] == ("other_report",) else e for e in es}
  subset = tt.training_examples(TRAIN[1:3], seed=0, tasks=report_level)
  assert subset and unmined(subset) <= unmined(examples)


def test_impression_to_report_mines_the_most_alike_other_report():
  rows = [_row("Heart size normal. Lungs clear.", "No acute cardiopulmonary process."),
          _row("Normal heart. Clear lungs.", "No acute cardiopulmonary process.."),  # the same impression
          _row("", "No acute process. Stable right rib fracture."),  # impression-only, the most alike
          _row("Large left pleural effusion.", "Left pleural effusion."),
          _row("Mild cardiomegaly. Small right pleural effusion.", "Cardiomegaly with a small right effusion.")]
  examples = tt.training_examples(rows, tasks=("impression_to_report",), n_negatives=1)
  by_query = {e.query: e for e in examples}
  first = by_query["[IMPRESSION] No acute cardiopulmonary process."]
  # The second row states the same impression (punctuation aside): a right answer, never a negative.
  assert first.negative_kinds[0] == "other_report" and first.negatives[0] == rows[2]["report_tagged"]
  effusion = by_query["[IMPRESSION] Left pleural effusion."]
  assert effusion.negatives[0] == rows[4]["report_tagged"]
  # Mining is by words, not by the answer: the negative is never the example's own report.
  assert all(e.negatives[0] != e.positive for e in examples)


def test_options():
  only = tt.training_examples(TRAIN, tasks=("summarization",), n_negatives=1)
  assert {e.task for e in only} == {"summarization"} and all(len(e.negatives) == 1 for e in only)
  flips = tt.training_examples(TRAIN[:2], tasks=("reordered_to_report",),
                               error_weights={"laterality": 1, "severity": 1, "false_negation": 1})
  assert flips and all("false_finding" not in e.negative_kinds for e in flips)
  with pytest.raises(ValueError, match="unknown task"):
    tt.training_examples(TRAIN, tasks=("poetry",))


def test_no_leakage_between_splits(examples):
  # Only the rows given are used: no test report, in any form, is a training query or positive.
  test_forms = {tt.text_key(f(r[k])) for r in TEST for k in ("report_tagged", "findings", "impression")
                for f in (str, reports.abbreviate, reports.expand)}
  assert not {tt.text_key(t) for e in examples for t in (e.query, e.positive)} & test_forms
  # Splits share stock sentences ("No pneumothorax.") and, in real data, whole reports; `exclude`
  # keeps every evaluated text out of training, negatives included.
  sets = tt.eval_sets(TEST, seed=0)
  evaluated = {tt.text_key(t) for t in tt.eval_texts(sets)}
  leaky = tt.training_examples(TRAIN + TEST[:1], seed=0, exclude=tt.eval_texts(sets))
  assert leaky and not {tt.text_key(t) for e in leaky for t in (e.query, e.positive, *e.negatives)} & evaluated


# ---- Batch sampler -------------------------------------------------------------------------------


def test_batches_are_one_task_and_conflict_free(examples):
  sampler = tt.TaskBatchSampler(examples, batch_size=4, seed=0)
  batches = sampler.epoch(0)
  assert batches and all(len(b) == 4 for b in batches)
  flat = np.concatenate(batches)
  assert len(set(flat.tolist())) == len(flat)  # no example twice in an epoch
  for batch in batches:
    assert len({examples[i].task for i in batch}) == 1
    queries = [tt.text_key(examples[i].query) for i in batch]
    positives = [tt.text_key(examples[i].positive) for i in batch]
    documents = [tt.text_key(t) for i in batch for t in (examples[i].positive, *examples[i].negatives)]
    assert len(set(queries)) == len(batch) and len(set(positives)) == len(batch)
    assert len(documents) == len(set(documents))
  assert [b.tolist() for b in sampler.epoch(0)] == [b.tolist() for b in batches]
  assert [b.tolist() for b in sampler.epoch(1)] != [b.tolist() for b in batches]


def test_batches_cover_the_data_and_resume():
  made = [tt.Example("t" + str(i % 2), "", f"q{i}", f"p{i}", (f"n{i}",), ("severity",)) for i in range(23)]
  sampler = tt.TaskBatchSampler(made, batch_size=4, seed=3, drop_remainder=False)
  flat = np.concatenate(sampler.epoch(0))
  assert sorted(flat.tolist()) == list(range(23))
  dropping = tt.TaskBatchSampler(made, batch_size=4, seed=3)
  assert len(dropping.epoch(0)) == 12 // 4 + 11 // 4  # full batches of t0 and of t1
  stream = dropping.iterate()
  first = [next(stream).tolist() for _ in range(12)]
  resumed = dropping.iterate(start_step=7)
  assert [next(resumed).tolist() for _ in range(5)] == first[7:]


def test_balanced_mixture_deals_tasks_in_rounds():
  """A big and a small task: proportional draws by size; balanced alternates them until the small
  one runs out, and both cover the same batches."""
  made = [tt.Example("big", "", f"q{i}", f"p{i}", (f"n{i}",), ("severity",)) for i in range(40)]
  made += [tt.Example("small", "", f"s{i}", f"r{i}", (f"m{i}",), ("severity",)) for i in range(8)]
  task = lambda b: made[b[0]].task
  balanced = tt.TaskBatchSampler(made, batch_size=4, seed=1, mixture="balanced").epoch(0)
  proportional = tt.TaskBatchSampler(made, batch_size=4, seed=1).epoch(0)
  assert sorted(map(task, balanced)) == sorted(map(task, proportional)) == ["big"] * 10 + ["small"] * 2
  assert sorted(map(task, balanced[:4])) == ["big", "big", "small", "small"]  # rounds 1 and 2
  assert sorted(np.concatenate(balanced).tolist()) == sorted(np.concatenate(proportional).tolist())
  with pytest.raises(ValueError, match="mixture"):
    tt.TaskBatchSampler(made, batch_size=4, mixture="uniform")


def test_shared_positive_never_twice_in_a_batch():
  # A stock impression shared by many queries: in-batch, one would be a false negative of another.
  made = [tt.Example("s", "", f"findings {i}", "No acute disease." if i % 2 else f"impression {i}", (f"n{i}",),
                     ("false_finding",)) for i in range(40)]
  for batch in tt.TaskBatchSampler(made, batch_size=4, seed=0).epoch(0):
    assert sum(made[i].positive == "No acute disease." for i in batch) <= 1


# ---- Evaluation sets -----------------------------------------------------------------------------


def test_eval_sets_are_consistent():
  sets = tt.eval_sets(TEST, seed=0)
  assert list(sets) == list(tt.EVAL_SETS)
  for name, s in sets.items():
    assert s.queries, name
    if isinstance(s, tt.RetrievalSet):
      keys = [tt.text_key(c) for c in s.candidates]
      assert len(keys) == len(set(keys))  # de-duplicated
      assert len(s.answers) == len(s.queries) and all(0 <= a < len(s.candidates) for a in s.answers)
      assert not {tt.text_key(q) for q in s.queries} & set(keys)  # no query is itself a candidate
      assert s.chance(1) == 1 / len(s.candidates)
  f2i = sets["findings_to_impression"]
  assert [f2i.candidates[a] for a in f2i.answers] == [r["impression"] for r in TEST]
  a2e = sets["abbreviated_to_expanded_sentence"]
  for q, a in zip(a2e.queries, a2e.answers):
    assert reports.expand(q) == a2e.candidates[a] != q
  assert "Sm R pl eff." in sets["expanded_to_abbreviated_sentence"].candidates
  i2r = sets["impression_to_report"]
  assert [i2r.candidates[a] for a in i2r.answers] == [r["report_tagged"] for r in TEST]


def test_error_mc4():
  mc4 = tt.eval_sets(TEST, seed=0)["error_mc4"]
  assert mc4.chance() == 0.25
  for query, options, answer, kinds in zip(mc4.queries, mc4.options, mc4.answers, mc4.option_kinds):
    assert len(set(options)) == 4 and query not in options
    assert kinds[answer] == "correct" and sorted(kinds).count("correct") == 1
    assert options[answer] in {r["report_tagged"] for r in TEST}
    assert variants.meaning(query) == variants.meaning(options[answer])
    assert all(variants.meaning(o) != variants.meaning(query) for i, o in enumerate(options) if i != answer)
  assert set(mc4.query_kinds) <= {"telegraphic shorthand", "abbreviated", "reordered"}
  assert [a for a in mc4.answers] == list(tt.eval_sets(TEST, seed=0)["error_mc4"].answers)


def test_ambiguous_queries_are_dropped():
  rows = [_row("The lungs are clear.", "No acute disease."), _row("The lungs are clear.", "Normal chest."),
          _row("Small left pleural effusion.", "No acute disease."), TEST[0], TEST[0],
          _row("Heart size normal.", "No pneumothorax."), _row("Lungs clear.", "No pneumothorax..")]
  sets = tt.eval_sets(rows, seed=0)
  f2i = sets["findings_to_impression"]
  assert "The lungs are clear." not in f2i.queries  # two different impressions: ambiguous
  assert f2i.candidates.count("No acute disease.") == 1  # duplicates are one candidate
  i2r = sets["impression_to_report"]
  assert "[IMPRESSION] No acute disease." not in i2r.queries  # shared by two different reports
  # ... or by two up to punctuation: both "No pneumothorax." and "No pneumothorax.." are dropped.
  assert i2r.queries == ("[IMPRESSION] Normal chest.", f"[IMPRESSION] {TEST[0]['impression']}")


def test_real_demo_reports(asset):
  from data_pipelines.sources import iu_xray
  records = iu_xray.read(asset("iu_reports")).records
  rows = {split: [{"report": r.report, "report_tagged": r.tagged, "findings": r.findings,
                   "impression": r.impression} for r in records if r.split == split][:30]
          for split in ("train", "test")}
  sets = tt.eval_sets(rows["test"], seed=0)
  assert all(len(s.queries) > 0 for s in sets.values()), {k: len(s.queries) for k, s in sets.items()}
  examples = tt.training_examples(rows["train"], seed=0, exclude=tt.eval_texts(sets))
  assert set(e.task for e in examples) == set(tt.TRAIN_TASKS)
  assert tt.training_examples(rows["train"], seed=0, exclude=tt.eval_texts(sets)) == examples
  evaluated = {tt.text_key(t) for t in tt.eval_texts(sets)}
  assert not {tt.text_key(t) for e in examples for t in (e.query, e.positive, *e.negatives)} & evaluated
  assert tt.TaskBatchSampler(examples, batch_size=8, seed=0).epoch(0)
