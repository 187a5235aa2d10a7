"""Text-task metrics (eval/text_tasks.py) against hand-computed cases, and `python -m cxrclip_jax.evaluate_text`."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

import data_fixtures
import hf_tiny
from cxrclip_jax import evaluate_text
from cxrclip_jax.eval import text_tasks as tt
from cxrclip_jax.eval.retrieval import NonFiniteError
from data_pipelines import text_tasks

R2 = 1 / math.sqrt(2)


def _angles(degrees):
  return np.stack([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], axis=1)


# (name, queries, candidates, answers, R@1, R@5, R@10, chance R@1, chance R@5, chance R@10)
RETRIEVAL_CASES = [
    ("each query its own direction", [[1, 0], [0, 1]], [[1, 0], [0, 1], [1, 1]], [0, 1], 1, 1, 1, 1 / 3, 1, 1),
    # c1 points where c0 does: a tie, which ranks the wrong candidate first.
    ("tie counts against", [[1, 0]], [[1, 0], [2, 0], [0, 1]], [0], 0, 1, 1, 1 / 3, 1, 1),
    ("constant embedding is last, not chance", [[1, 1]] * 3, [[2, 2]] * 3, [0, 1, 2], 0, 1, 1, 1 / 3, 1, 1),
    # Five candidates (0..40 degrees) are closer than the answer at 50 degrees: rank 6 of 12.
    ("rank 6 of 12", [[1, 0]], _angles(np.arange(12) * 10.0), [5], 0, 0, 1, 1 / 12, 5 / 12, 10 / 12),
    # Two correct candidates: the better one (c1) counts; chance 1 - C(1,1)/C(3,1) = 2/3 at k=1.
    ("several correct", [[1, 0]], [[0, 1], [1, 0.1], [1, 0.5]], [(0, 1)], 1, 1, 1, 2 / 3, 1, 1),
    ("several correct, both beaten", [[1, 0]], [[0, 1], [-1, 0], [1, 0.5]], [(0, 1)], 0, 1, 1, 2 / 3, 1, 1),
    ("two queries, one hit", [[1, 0], [0, 1]], [[1, 0], [1, 1], [0, 1]], [0, 1], 0.5, 1, 1, 1 / 3, 1, 1),
]


@pytest.mark.parametrize("case", RETRIEVAL_CASES, ids=[c[0] for c in RETRIEVAL_CASES])
def test_score_retrieval(case):
  _, q, c, answers, r1, r5, r10, c1, c5, c10 = case
  m = tt.score_retrieval(np.asarray(q, float), np.asarray(c, float), answers)
  assert (m["R@1"], m["R@5"], m["R@10"]) == pytest.approx((r1, r5, r10))
  assert (m["chance"]["R@1"], m["chance"]["R@5"], m["chance"]["R@10"]) == pytest.approx((c1, c5, c10))
  assert m["n"] == len(answers) and m["candidates"] == len(c)


def test_score_retrieval_empty_and_nonfinite():
  m = tt.score_retrieval(np.zeros((0, 2)), np.eye(2), [])
  assert m["n"] == 0 and m["R@1"] is None
  with pytest.raises(NonFiniteError, match=r"^acronyms: non-finite values in 1 of 2 candidate_embeddings rows"):
    tt.score_retrieval(np.eye(2), np.array([[1, 0], [np.nan, 1]]), [0, 1], name="acronyms")


# Item 1: right; item 2: the correct option ties a laterality error (a miss); item 3: right.
CHOICE_Q = [[1, 0], [0, 1], [1, 0]]
CHOICE_O = [[[1, 0], [0, 1], [-1, 0], [1, 1]],
            [[1, 0], [0, 1], [0, 2], [1, 0]],
            [[0, 1], [1, 1], [1, 0], [-1, -1]]]
CHOICE_A = [0, 1, 2]
CHOICE_KINDS = [("correct", "laterality", "severity", "false_negation"),
                ("severity", "correct", "laterality", "false_finding"),
                ("laterality", "severity", "correct", "false_negation")]
CHOICE_QUERY_KINDS = ["abbreviated", "reordered", "abbreviated"]


def test_score_choice_hand_computed():
  m = tt.score_choice(np.asarray(CHOICE_Q, float), np.asarray(CHOICE_O, float), CHOICE_A,
                      option_kinds=CHOICE_KINDS, query_kinds=CHOICE_QUERY_KINDS)
  assert m["accuracy"] == pytest.approx(2 / 3) and m["chance"] == 0.25 and m["n"] == 3
  # Pairwise per error kind: the correct option strictly above each wrong option of that kind.
  expect = {"laterality": (2 / 3, 3), "severity": (1.0, 3), "false_negation": (1.0, 2), "false_finding": (1.0, 1)}
  assert {k: (round(v["accuracy"], 6), v["n"]) for k, v in m["by_error_kind"].items()} == \
      {k: (round(a, 6), n) for k, (a, n) in expect.items()}
  assert all(v["chance"] == 0.5 for v in m["by_error_kind"].values())
  assert m["by_query_kind"] == {"abbreviated": {"accuracy": 1.0, "n": 2}, "reordered": {"accuracy": 0.0, "n": 1}}


@pytest.mark.parametrize("options,answers,accuracy", [
    ([[[1, 0], [0, 1]]], [0], 1.0),
    ([[[0, 1], [1, 0]]], [0], 0.0),
    ([[[1, 0], [1, 0]]], [0], 0.0),  # a tie is a miss: a constant encoder scores 0, not chance
    ([[[2, 0], [1, 1], [0, 1]]], [0], 1.0),  # three options, chance 1/3
])
def test_score_choice_strictness(options, answers, accuracy):
  m = tt.score_choice(np.array([[1.0, 0.0]]), np.asarray(options, float), answers)
  assert m["accuracy"] == accuracy and m["chance"] == pytest.approx(1 / len(options[0]))
  assert "by_error_kind" not in m


# ---- evaluate_sets with bag-of-words vectors --------------------------------------------------------

def _words(text):
  return re.findall(r"[a-z]+", text.lower())


class BagOfWords:
  """embed_fn: word counts (instructions ignored, as BERT does), recording what it was asked."""

  def __init__(self):
    self.calls = []

  def __call__(self, texts, instructions):
    self.calls.append(list(zip(texts, instructions)))
    vocab = sorted({w for t in texts for w in _words(t)})
    out = np.zeros((len(texts), len(vocab)))
    for i, t in enumerate(texts):
      for w in _words(t):
        out[i, vocab.index(w)] += 1
    return out


SETS = {
    # q0 shares {left, effusion} with c0 (cos .82) vs .41 / .50; q1 likewise with c1.
    "lateral": text_tasks.RetrievalSet("lateral", "Find it", ("left effusion", "right effusion"),
                                       ("left pleural effusion", "right pleural effusion", "no effusion"), (0, 1)),
    # Item 1: the correct option shares 3 words, each error 2. Item 2: the correct option ties the
    # negation and severity errors (cos .82 each): a miss.
    "mc": text_tasks.ChoiceSet(
        "mc", "Same findings", ("small left effusion", "right effusion"),
        (("small left effusion seen", "small right effusion seen", "large left effusion seen", "no left effusion seen"),
         ("effusion right side", "effusion left side", "no right effusion", "right effusion large")),
        (0, 0),
        (("correct", "laterality", "severity", "false_negation"),
         ("correct", "laterality", "false_negation", "severity")),
        ("abbreviated", "reordered")),
    # Shares a candidate text with "lateral": embedded once; its query with another instruction.
    "shared": text_tasks.RetrievalSet("shared", "Other", ("left effusion",), ("right pleural effusion",
                                                                             "left pleural effusion"), (1,)),
}


def test_evaluate_sets_bag_of_words():
  embed_fn = BagOfWords()
  out = tt.evaluate_sets(embed_fn, SETS)
  assert len(embed_fn.calls) == 1  # one call for all sets: the embedder batches everything by length
  asked = embed_fn.calls[0]
  assert len(asked) == len(set(asked))  # every (text, instruction) once
  assert ("left effusion", "Find it") in asked and ("left effusion", "Other") in asked
  assert ("left pleural effusion", "") in asked and ("left pleural effusion", "Find it") not in asked
  assert len(asked) == 2 + 3 + 2 + 8 + 1  # lateral's 2 queries + 3 candidates, mc's, shared's query
  assert out["lateral"]["R@1"] == 1.0 and out["lateral"]["chance"]["R@1"] == pytest.approx(1 / 3)
  assert out["shared"]["R@1"] == 1.0 and out["shared"]["chance"]["R@1"] == 0.5
  mc = out["mc"]
  assert mc["accuracy"] == 0.5 and mc["chance"] == 0.25 and mc["n"] == 2
  assert {k: v["accuracy"] for k, v in mc["by_error_kind"].items()} == {
      "laterality": 1.0, "severity": 0.5, "false_negation": 0.5}
  json.dumps(out)  # metrics.json-ready


def test_evaluate_sets_names_the_task_with_nonfinite_embeddings():
  def embed_fn(texts, instructions):
    out = BagOfWords()(texts, instructions)
    out[[i for i, t in enumerate(texts) if "large" in t]] = np.nan
    return out
  with pytest.raises(NonFiniteError, match=r"^mc: non-finite values in 2 of 8 option_embeddings rows") as e:
    tt.evaluate_sets(embed_fn, SETS)
  assert "\n" not in str(e.value)


def test_limit_queries_keeps_candidates():
  sets = tt.limit_queries(SETS, 1)
  assert sets["lateral"].queries == ("left effusion",) and len(sets["lateral"].candidates) == 3
  assert len(sets["mc"].options) == len(sets["mc"].option_kinds) == len(sets["mc"].query_kinds) == 1


# ---- table ------------------------------------------------------------------------------------------

def _r(r1, chance1, n=100, r5=None, r10=None):
  return {"R@1": r1, "R@5": r5 or r1, "R@10": r10 or r1, "chance": {"R@1": chance1, "R@5": 5 * chance1,
                                                                     "R@10": 10 * chance1}, "n": n}


def test_format_table_layout():
  results = {
      "smollm2": {"findings_to_impression": _r(0.431, 0.004, 250, 0.6, 0.7),
                  "abbreviated_to_expanded_sentence": _r(0.5, 0.001),
                  "error_mc4": {"accuracy": 0.333, "chance": 0.25, "n": 377,
                                "by_error_kind": {"laterality": {"accuracy": 0.6, "chance": 0.5, "n": 300}}}},
      "minilm": {"findings_to_impression": _r(0.9, 0.004, 250), "error_mc4": {"accuracy": 0.5, "chance": 0.25,
                                                                              "n": 377}},
  }
  lines = tt.format_table(results).splitlines()
  assert lines[0].split() == ["task", "n", "smollm2", "minilm"]
  body = {l.split()[0]: l for l in lines[2:-1] if not l.startswith(" ")}
  assert "R@1 43.1 (0.4)" in body["findings_to_impression"] and "R@1 90.0 (0.4)" in body["findings_to_impression"]
  assert "250" in body["findings_to_impression"]
  r5 = lines[lines.index(body["findings_to_impression"]) + 1]
  assert "R@5 60.0 (2.0)" in r5 and "R@10" in lines[lines.index(r5) + 1]
  assert "acc 33.3 (25.0)" in body["error_mc4"] and "acc 50.0 (25.0)" in body["error_mc4"]
  assert body["abbreviated_to_expanded_sentence"].rstrip().endswith("—")  # minilm lacks that task
  assert len({len(l) for l in lines[:-1]}) == 1  # aligned columns
  assert "chance" in lines[-1]
  detailed = tt.format_table(results, details=True)
  assert re.search(r"vs laterality\s+60\.0 \(50\.0\)\s+—", detailed)


# ---- model specs and directory settings --------------------------------------------------------------

@pytest.mark.parametrize("spec,expect", [
    ("/m/smollm2", dict(model_dir="/m/smollm2", label="smollm2")),
    ("/m/smollm2/:causal:layers=10", dict(model_dir="/m/smollm2/", bidirectional=False, num_layers=10,
                                          label="smollm2:causal:layers=10")),
    ("/m/x:bidirectional", dict(model_dir="/m/x", bidirectional=True, label="x:bidirectional")),
    ("/m/a:b:pooling=weighted_mean:max_length=64", dict(model_dir="/m/a:b", pooling="weighted_mean", max_length=64,
                                                         label="a:b:pooling=weighted_mean:max_length=64")),
])
def test_model_spec_parse(spec, expect):
  assert evaluate_text.ModelSpec.parse(spec) == evaluate_text.ModelSpec(**expect)


@pytest.mark.parametrize("spec", ["/m:causal:bidirectional", "/m:layers=0", "/m:pooling=maximum"])
def test_model_spec_parse_errors(spec):
  with pytest.raises(ValueError):
    evaluate_text.ModelSpec.parse(spec)


@pytest.mark.parametrize("config,spec_options,expect", [
    (None, "", dict(pooling="mean", bidirectional=False, max_length=512)),  # raw decoder: causal
    (None, ":bidirectional:max_length=64", dict(pooling="mean", bidirectional=True, max_length=64)),
    ({"pooling_mode": "weighted_mean", "max_length": 128}, "", dict(pooling="weighted_mean", bidirectional=True,
                                                                   max_length=128)),
    ({"pooling_mode": "mean", "bidirectional": False}, "", dict(pooling="mean", bidirectional=False)),
    ({"pooling_mode": "weighted_mean", "bidirectional": True}, ":causal:pooling=mean",
     dict(pooling="mean", bidirectional=False)),
])
def test_llm_settings_from_the_directory(config, spec_options, expect, tmp_path):
  if config is not None:
    (tmp_path / "llm2vec_config.json").write_text(json.dumps(config))
  s = evaluate_text.llm_settings(evaluate_text.ModelSpec.parse(str(tmp_path) + spec_options))
  assert {k: s[k] for k in expect} == expect


def test_column_labels_stay_apart():
  specs = [evaluate_text.ModelSpec.parse(s) for s in ("/w1/export", "/w2/export", "/w1/export", "/m/s:causal")]
  assert evaluate_text._labels(specs) == ["w1/export", "w2/export", "w1/export#2", "s:causal"]


STATEMENTS = [
    {"expanded": "small left pleural effusion", "abbreviated": "small left pl eff",
     "errors": ["small right pleural effusion", "large left pleural effusion", "no left pleural effusion"]},
    {"expanded": "right lower lobe consolidation", "abbreviated": "RLL consolidation",
     "errors": ["left lower lobe consolidation", "right upper lobe consolidation", "no consolidation"]},
]


def test_statement_sets_bag_of_words():
  sets = text_tasks.statement_sets(STATEMENTS)
  assert list(sets) == list(text_tasks.STATEMENT_SETS)
  a2e = sets["abbreviated_to_expanded_sentence"]
  assert a2e.queries == ("small left pl eff", "RLL consolidation") and a2e.answers == (0, 1)
  assert sets["expanded_to_abbreviated_sentence"].candidates == ("small left pl eff", "RLL consolidation")
  mc = sets["error_mc4"]
  for item, options, answer, kinds in zip(STATEMENTS, mc.options, mc.answers, mc.option_kinds):
    assert sorted(options) == sorted([item["expanded"]] + item["errors"])
    assert options[answer] == item["expanded"] and kinds[answer] == "correct" and kinds.count("error") == 3
  assert text_tasks.statement_sets(STATEMENTS, seed=0) == sets  # seeded, deterministic
  out = tt.evaluate_sets(BagOfWords(), sets)
  # Bag of words: "small left pl eff" shares two words with its answer and one with each error (a
  # hit); "RLL consolidation" shares only "consolidation", with its answer and with the laterality
  # error alike (a tie: a miss). In retrieval each query's answer is its best candidate.
  assert out["abbreviated_to_expanded_sentence"]["R@1"] == 1.0
  assert out["error_mc4"]["accuracy"] == 0.5 and out["error_mc4"]["chance"] == 0.25


def test_read_statements(tmp_path):
  path = tmp_path / "s.jsonl"
  path.write_text("\n".join(json.dumps(s) for s in STATEMENTS) + "\n\n")
  assert evaluate_text.read_statements(str(path)) == STATEMENTS
  for body, match in [("{nope", r"s.jsonl:1: not JSON"), ('{"expanded": "a", "abbreviated": "b"}', "errors"),
                      ('{"expanded": "a", "abbreviated": " ", "errors": ["c"]}', "non-empty"), ("", "no statements")]:
    path.write_text(body)
    with pytest.raises(evaluate_text.embed.InputError, match=match):
      evaluate_text.read_statements(str(path))
  with pytest.raises(evaluate_text.embed.InputError, match="--statements"):
    evaluate_text.read_statements(str(tmp_path / "missing.jsonl"))


def test_committed_statements_are_well_formed():
  import pathlib
  items = evaluate_text.read_statements(str(pathlib.Path(__file__).parents[1] / "benchmarks" / "statements.jsonl"))
  sets = text_tasks.statement_sets(items)
  assert len(items) >= 40 and all(len(i["errors"]) == 3 for i in items)
  assert len(sets["abbreviated_to_expanded_sentence"].queries) == len(items)  # no statement dropped as ambiguous
  assert len({text_tasks.text_key(o) for i in items for o in [i["expanded"]] + i["errors"]}) == 4 * len(items)


# ---- the CLI on a tiny random LLM and a tiny prepared dataset ------------------------------------------

REPORTS = [
    ("There is a small left pleural effusion. No pneumothorax. Heart size is normal.", "Small left pleural effusion."),
    ("Mild cardiomegaly. There is a right lower lobe consolidation. No pleural effusion.",
     "Right lower lobe pneumonia."),
    ("The lungs are clear. No pleural effusion or pneumothorax. The heart is normal in size.", "No acute process."),
    ("Moderate right pleural effusion with adjacent atelectasis. No pneumothorax.", "Moderate right effusion."),
    ("Large left upper lobe mass. No pleural effusion. Normal heart size.", "Left upper lobe mass."),
    ("Small bilateral pleural effusions. Mild pulmonary edema. No pneumothorax.", "Mild edema and small effusions."),
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from data_pipelines import prepare
  root = tmp_path_factory.mktemp("textdata")
  src = root / "src"
  rows = []
  for i, (findings, impression) in enumerate(REPORTS * 2):
    data_fixtures.write_image(src / "img" / f"{i}.png", data_fixtures.radiograph(i))
    rows.append({"image": f"img/{i}.png", "report": f"[FINDINGS] {findings} [IMPRESSION] {impression}",
                 "study_id": f"s{i}", "patient_id": f"p{i}", "split": "test" if i < len(REPORTS) else "train"})
  data_fixtures.manifest(src, rows)
  prepare.run(prepare.Options("manifest", str(root / "prepared"), str(src), image_size=32, shard_size=16))
  return root / "prepared"


def run_cli(*args):
  proc = subprocess.run([sys.executable, "-m", "cxrclip_jax.evaluate_text", *args], capture_output=True, text=True,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  return proc.returncode, proc.stdout, proc.stderr


def test_cli_table_and_metrics_json(tiny_data, tmp_path, asset):
  model = hf_tiny.model_dir_with_tokenizer("mistral", tmp_path / "tiny", asset)
  out = tmp_path / "out" / "metrics.json"
  code, stdout, stderr = run_cli(f"--model_dir={model}", f"--model_dir={model}:bidirectional:layers=1",
                                 f"--data_dir={tiny_data}", f"--output={out}", "--batch_size=8")
  assert code == 0, stderr
  results = json.loads(out.read_text())
  assert list(results) == ["tiny", "tiny:bidirectional:layers=1"]
  for by_task in results.values():
    assert set(by_task) == set(text_tasks.EVAL_SETS)
    for task, m in by_task.items():
      assert m["chance"] is not None, task
      if task == "error_mc4":
        assert m["chance"] == 0.25 and m["n"] > 0 and 0 <= m["accuracy"] <= 1
      else:
        assert m["n"] > 0, task
        assert 0 < m["chance"]["R@1"] <= m["chance"]["R@5"] <= 1 and 0 <= m["R@1"] <= m["R@10"] <= 1
  assert "tiny: LLM, mean pooling, causal, max_length 512, 2 layers" in stdout
  assert "tiny:bidirectional:layers=1: LLM, mean pooling, bidirectional, max_length 512, 1 layers" in stdout
  header = next(l for l in stdout.splitlines() if l.startswith("task"))
  assert header.split() == ["task", "n", "tiny", "tiny:bidirectional:layers=1"]
  mc4 = next(l for l in stdout.splitlines() if l.startswith("error_mc4"))
  assert mc4.count("(25.0)") == 2
  assert results["tiny"] != results["tiny:bidirectional:layers=1"]


def test_cli_bad_input_is_one_line(tiny_data, tmp_path):
  code, _, stderr = run_cli(f"--model_dir={tmp_path / 'nope'}", f"--data_dir={tiny_data}")
  assert code == 1 and stderr.count("\n") == 1 and stderr.startswith("error: ") and "nope" in stderr, stderr
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
  code, _, stderr = run_cli(f"--model_dir={tmp_path}", f"--data_dir={tiny_data}", "--split=validation")
  assert code == 1 and "no 'validation' records" in stderr, stderr
