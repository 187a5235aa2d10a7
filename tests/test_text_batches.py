"""Step-indexed batches of the LLM2VEC4CXR text stages (MNTP, SimCSE, supervised contrastive)."""
import time

import numpy as np
import pytest

import data_fixtures as fx
from data_pipelines import reports, text_batches as tb, text_tasks as tt
from data_pipelines.pipeline_transforms import IGNORE_INDEX
from data_pipelines.pipelines import mask_token_id
from data_pipelines.tokenization import Llm2VecTokenizer

MAX_LENGTH = 24
REPORTS = [
    "Small right pleural effusion. The heart is normal in size.", "The lungs are clear. No pneumothorax.",
    "Mild cardiomegaly. No focal consolidation.", "Left basilar atelectasis. Small bilateral effusions.",
    "Moderate right pneumothorax.", "No acute cardiopulmonary process.", "Stable 8 mm nodule in the right upper lobe.",
    "Interval increase in bibasilar opacities.", "Right PICC tip at the cavoatrial junction.",
    "ETT 4 cm above the carina.", "Large left pleural effusion with adjacent atelectasis.", "Normal chest.",
]


def _words(max_length=MAX_LENGTH):
  return Llm2VecTokenizer(fx.WordTokenizer(), max_length=max_length, wrapper="none")


def _equal(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_slices_and_resume(make, steps=range(6), process_count=4):
  """Deterministic in (seed, step); a fresh maker at step s equals a straight run; slices of all
  processes concatenated equal the one-process batch."""
  straight, again = make(), make()
  batches = [straight.batch(s) for s in steps]
  for s, b in zip(reversed(steps), reversed(batches)):  # a new object, visited backwards: no state
    _equal(again.batch(s), b)
  resumed = make()
  _equal(resumed.batch(steps[-1]), batches[-1])
  for s, b in zip(steps, batches):
    parts = [make().batch(s, p, process_count) for p in range(process_count)]
    _equal({k: np.concatenate([p[k] for p in parts]) for k in b}, b)
  return batches


# ---- MNTP ------------------------------------------------------------------------------------------


def test_mntp_chunks_are_the_token_stream_without_padding():
  tok = _words()
  chunks = tb.mntp_chunks(REPORTS + ["   ", ""], tok, 8)
  stream = np.concatenate([fx.WordTokenizer()(t)["input_ids"] for t in REPORTS])  # BOS + words each
  assert chunks.dtype == np.int32 and chunks.shape == (len(stream) // 8, 8)
  np.testing.assert_array_equal(chunks.ravel(), stream[:chunks.size])  # remainder dropped, nothing padded
  assert (chunks == fx.WordTokenizer.bos_token_id).sum() == np.sum(stream[:chunks.size] == 1)
  # A raw tokenizer works alike; small tokenize batches change nothing.
  np.testing.assert_array_equal(tb.mntp_chunks(REPORTS, fx.WordTokenizer(), 8, tokenize_batch=3), chunks)


def test_mntp_chunks_with_the_real_tokenizer(asset):
  import tokenizers
  tok = Llm2VecTokenizer.from_model_dir(asset("smollm2"))
  chunks = tb.mntp_chunks(REPORTS, tok, 16)
  ref = tokenizers.Tokenizer.from_file(str(asset("smollm2") / "tokenizer.json"))
  stream = np.concatenate([ref.encode(t, add_special_tokens=True).ids for t in REPORTS])
  np.testing.assert_array_equal(chunks.ravel(), stream[:chunks.size])
  assert len(stream) - chunks.size < 16
  assert mask_token_id(tok.tokenizer, "blank") == ref.token_to_id("_")


def _mntp(chunks, batch_size=8, seed=0, **kw):
  kw = {"mask_token_id": 5, "vocab_size": 1000, "special_ids": [1, 2], **kw}
  return tb.MntpBatches(chunks, batch_size, seed, **kw)


def test_mntp_batches_resume_and_process_slices():
  chunks = np.random.default_rng(0).integers(3, 1000, (37, 16)).astype(np.int32)
  batches = _check_slices_and_resume(lambda: _mntp(chunks), steps=range(10))
  b = batches[0]
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {k: ((8, 16), np.int32) for k in b}
  assert set(b) == {"input_ids", "attention_mask", "labels"} and (b["attention_mask"] == 1).all()
  maker = _mntp(chunks)
  assert maker.steps_per_epoch == 4
  # Each epoch visits distinct chunks (a new order each epoch); the same chunk is masked afresh.
  epoch = [maker._order.indices(s) for s in range(4)]
  assert len(set(np.concatenate(epoch).tolist())) == 32
  assert not np.array_equal(maker._order.indices(4), epoch[0])
  assert not np.array_equal(_mntp(chunks, seed=1).batch(0)["input_ids"], b["input_ids"])


def test_mntp_masking_rates_follow_hf_collator():
  rng = np.random.default_rng(1)
  chunks = rng.integers(10, 1000, (256, 512)).astype(np.int32)
  chunks[:, ::64] = 1  # special tokens in the stream (each report's BOS)
  chunks[:, 1::97] = 2
  special = np.isin(chunks, [1, 2])
  maker = _mntp(chunks, batch_size=64)
  batches = [maker.batch(s) for s in range(4)]
  inputs = np.concatenate([b["input_ids"] for b in batches])
  labels = np.concatenate([b["labels"] for b in batches])
  original = np.concatenate([chunks[maker._order.indices(s)] for s in range(4)])
  is_special = np.isin(original, [1, 2])
  selected = labels != IGNORE_INDEX
  assert special.any() and not selected[is_special].any()  # special tokens never labelled
  assert abs(selected[~is_special].mean() - 0.2) < 0.005
  np.testing.assert_array_equal(labels[selected], original[selected])
  np.testing.assert_array_equal(inputs[~selected], original[~selected])
  masked, kept = inputs[selected] == 5, inputs[selected] == original[selected]
  random_ = ~masked & ~kept
  assert abs(masked.mean() - 0.8) < 0.01 and abs(kept.mean() - 0.1) < 0.01 and abs(random_.mean() - 0.1) < 0.01
  assert ((inputs[selected][random_] >= 0) & (inputs[selected][random_] < 1000)).all()


def test_mntp_all_mask_is_llm2vec_full_masking():
  chunks = np.random.default_rng(2).integers(10, 1000, (64, 256)).astype(np.int32)
  chunks[:, 0] = 1
  b = _mntp(chunks, batch_size=64, all_mask=True, mlm_probability=0.8).batch(0)
  selected = b["labels"] != IGNORE_INDEX
  assert not selected[:, 0].any() and abs(selected[:, 1:].mean() - 0.8) < 0.01
  assert (b["input_ids"][selected] == 5).all()
  original = chunks[_mntp(chunks, batch_size=64)._order.indices(0)]
  np.testing.assert_array_equal(b["input_ids"][~selected], original[~selected])


def test_mntp_validates():
  chunks = np.zeros((4, 8), np.int32)
  with pytest.raises(ValueError, match="fewer than one batch"):
    _mntp(chunks, batch_size=8)
  with pytest.raises(ValueError, match="not divisible"):
    _mntp(chunks, batch_size=4).batch(0, 0, 3)
  with pytest.raises(ValueError, match="mask_replace_prob"):
    _mntp(chunks, batch_size=4, mask_replace_prob=0.95, random_replace_prob=0.1)


# ---- SimCSE ----------------------------------------------------------------------------------------


def test_simcse_batches_are_distinct_texts_padded():
  texts = REPORTS + [r.upper() for r in REPORTS[:4]] + ["  " + REPORTS[5] + " ", ""]  # duplicates by text_key
  assert tb.simcse_texts(texts) == REPORTS
  batches = _check_slices_and_resume(lambda: tb.SimcseBatches(texts, _words(), 4, MAX_LENGTH, seed=0),
                                     steps=range(7))
  for b in batches:
    assert {k: v.shape for k, v in b.items()} == {k: (4, MAX_LENGTH) for k in ("input_ids", "attention_mask",
                                                                              "embed_mask")}
    assert len({row.tobytes() for row in b["input_ids"]}) == 4  # B distinct texts
    # No instruction: every text token is pooled, BOS attended only.
    np.testing.assert_array_equal(b["embed_mask"].sum(1), b["attention_mask"].sum(1) - 1)
  epoch = np.concatenate([tb.SimcseBatches(texts, _words(), 4, MAX_LENGTH, seed=0)._order.indices(s)
                          for s in range(3)])
  assert sorted(epoch.tolist()) == list(range(12))


def test_simcse_sentence_units():
  tagged = [reports.Report("Small right pleural effusion. No pneumothorax.", "Effusion. No pneumothorax.").tagged(),
            reports.Report("", "No pneumothorax.").tagged()]
  assert tb.simcse_texts(tagged, "sentence") == ["Small right pleural effusion.", "No pneumothorax.", "Effusion."]
  maker = tb.SimcseBatches(tagged, _words(), 3, MAX_LENGTH, seed=0, unit="sentence")
  assert maker.batch(0)["input_ids"].shape == (3, MAX_LENGTH)
  with pytest.raises(ValueError, match="unit"):
    tb.simcse_texts(tagged, "paragraph")


# ---- Supervised ------------------------------------------------------------------------------------


def _examples():
  tasks = ("summarization", "abbreviated_to_expanded", "shorthand_to_sentence")
  out = []
  for i in range(30):
    task = tasks[i % 3]
    negatives = tuple(f"negative {j} of positive {i}" for j in range(1 + i % 3))
    out.append(tt.Example(task, tt.INSTRUCTIONS[task], f"query number {i}", f"positive text {i}", negatives,
                          ("severity",) * len(negatives)))
  return out


def test_supervised_batches_shapes_tasks_and_negatives():
  examples = _examples()
  make = lambda: tb.SupervisedBatches(examples, _words(), 4, MAX_LENGTH, seed=0, n_negatives=3)
  batches = _check_slices_and_resume(make, steps=range(8))
  maker = make()
  for s, b in enumerate(batches):
    shapes = {k: v.shape for k, v in b.items()}
    for prefix in ("query_", "positive_"):
      for k in ("input_ids", "attention_mask", "embed_mask"):
        assert shapes.pop(prefix + k) == (4, MAX_LENGTH)
    for k in ("input_ids", "attention_mask", "embed_mask"):
      assert shapes.pop("negative_" + k) == (4, 3, MAX_LENGTH)
    assert shapes == {"negative_valid": (4, 3), "task_index": (4,)}
    assert len(set(b["task_index"].tolist())) == 1  # one task per global batch
    rows = [examples[i] for i in maker.indices(s)]
    assert [tt.TRAIN_TASKS[t] for t in b["task_index"]] == [e.task for e in rows]
    for r, e in enumerate(rows):
      n = len(e.negatives)
      np.testing.assert_array_equal(b["negative_valid"][r], [j < n for j in range(3)])
      for j in range(n, 3):  # repeats of the last negative
        np.testing.assert_array_equal(b["negative_input_ids"][r, j], b["negative_input_ids"][r, n - 1])
      expected = _words()([e.negatives[-1]], pad_to=MAX_LENGTH)["input_ids"][0]
      np.testing.assert_array_equal(b["negative_input_ids"][r, n - 1], expected)
    # The instruction is attended to but not pooled; documents pool all their text tokens.
    assert (b["query_embed_mask"].sum(1) < b["query_attention_mask"].sum(1) - 1).all()
    np.testing.assert_array_equal(b["positive_embed_mask"].sum(1), b["positive_attention_mask"].sum(1) - 1)
  one = tb.SupervisedBatches(examples, _words(), 4, MAX_LENGTH, seed=0).batch(0)
  assert one["negative_input_ids"].shape == (4, 1, MAX_LENGTH) and one["negative_valid"].all()


def test_supervised_negative_that_truncation_makes_a_positive_is_invalid():
  # The error sits past max_length in the first example (its truncated negative is its positive)
  # and in the second the truncated negative equals the *other* row's positive: neither is scored.
  head = " ".join(f"w{i}" for i in range(MAX_LENGTH))
  examples = [tt.Example("summarization", "", "q0", f"{head} left", (f"{head} right", "short error"), ("laterality",) * 2),
              tt.Example("summarization", "", "q1", f"{head} x", (f"{head} y",), ("severity",)),
              tt.Example("summarization", "", "q2", "plain", ("plain not",), ("false_negation",))]
  b = tb.SupervisedBatches(examples, _words(), 3, MAX_LENGTH, seed=0, n_negatives=2, length_multiple=0).batch(0)
  order = [e.query for e in (examples[i] for i in tb.SupervisedBatches(examples, _words(), 3, MAX_LENGTH, 0).indices(0))]
  valid = dict(zip(order, b["negative_valid"].tolist()))
  assert valid == {"q0": [False, True], "q1": [False, False], "q2": [True, False]}


def test_impression_to_report_examples_cut_before_the_impression_are_dropped():
  long_report = " ".join(f"w{i}" for i in range(MAX_LENGTH)) + " [IMPRESSION] No effusion."
  tokenizer = _words()
  specials = len(tokenizer.encode_rows(["w0"])[0][0]) - 1
  fits = " ".join(f"w{i}" for i in range(MAX_LENGTH - specials))
  assert len(tokenizer.encode_rows([fits])[0][0]) == MAX_LENGTH  # exactly fits: kept
  examples = [tt.Example("impression_to_report", "", "[IMPRESSION] No effusion.", long_report, ("n",), ("severity",)),
              tt.Example("impression_to_report", "", "q", fits, ("n",), ("severity",)),
              tt.Example("reordered_to_report", "", "q", long_report, ("n",), ("severity",))]  # other tasks: kept
  kept, dropped = tb.drop_cut_reports(examples, tokenizer, MAX_LENGTH)
  assert kept == examples[1:] and dropped == 1


def test_supervised_order_is_the_task_batch_sampler():
  examples = _examples()
  maker = tb.SupervisedBatches(examples, _words(), 4, MAX_LENGTH, seed=3)
  stream = tt.TaskBatchSampler(examples, 4, seed=3).iterate()
  for s in range(20):  # several epochs (6 batches each)
    np.testing.assert_array_equal(maker.indices(s), next(stream))
  np.testing.assert_array_equal(tb.SupervisedBatches(examples, _words(), 4, MAX_LENGTH, seed=3).indices(19),
                                maker.indices(19))


def test_supervised_validates():
  examples = _examples()
  with pytest.raises(ValueError, match="unknown task"):
    tb.SupervisedBatches([tt.Example("x", "", "q", "p", ("n",), ("severity",))], _words(), 1, MAX_LENGTH, 0)
  no_negatives = [tt.Example(e.task, e.instruction, e.query, e.positive, (), ()) for e in examples]
  with pytest.raises(ValueError, match="no negatives"):
    tb.SupervisedBatches(no_negatives, _words(), 4, MAX_LENGTH, 0)
  b = tb.SupervisedBatches(no_negatives, _words(), 4, MAX_LENGTH, 0, n_negatives=0).batch(0)
  assert b["negative_input_ids"].shape == (4, 0, MAX_LENGTH) and b["negative_valid"].shape == (4, 0)


def test_supervised_with_the_real_tokenizer(asset):
  tok = Llm2VecTokenizer.from_model_dir(asset("smollm2"), max_length=64)
  rows = [{"findings": f, "impression": i, "report_tagged": reports.Report(f, i).tagged()}
          for f, i in [("Small right pleural effusion. No pneumothorax.", "Small right effusion."),
                       ("The lungs are clear. The heart is normal in size.", "No acute disease."),
                       ("Mild cardiomegaly. Left basilar atelectasis.", "Cardiomegaly and atelectasis."),
                       ("Moderate left pneumothorax. No pleural effusion.", "Moderate left pneumothorax.")]]
  examples = tt.training_examples(rows, seed=0)
  maker = tb.SupervisedBatches(examples, tok, 2, 64, seed=0, n_negatives=2)
  b = maker.batch(0)
  e = examples[maker.indices(0)[0]]
  np.testing.assert_array_equal(b["query_input_ids"][0], tok([e.query], e.instruction, pad_to=64)["input_ids"][0])
  pooled = tok.tokenizer.decode(b["positive_input_ids"][0][b["positive_embed_mask"][0] == 1])
  assert pooled.strip() == e.positive.strip()
  query_pooled = tok.tokenizer.decode(b["query_input_ids"][0][b["query_embed_mask"][0] == 1])
  assert e.instruction not in query_pooled and query_pooled.strip().endswith(e.query.strip()[-12:])


# ---- Cached examples -------------------------------------------------------------------------------


def _rows():
  pairs = [("There is a small left pleural effusion. The heart is mildly enlarged.", "Small left pleural effusion."),
           ("Right lower lobe consolidation. No pneumothorax is seen.", "Right lower lobe pneumonia."),
           ("Moderate right pneumothorax. No pleural effusion.", "Moderate right pneumothorax.")]
  return [{"findings": f, "impression": i, "report": reports.Report(f, i).text(),
           "report_tagged": reports.Report(f, i).tagged()} for f, i in pairs]


def test_cached_training_examples(tmp_path, monkeypatch):
  rows = _rows()
  built = tb.cached_training_examples(rows, tmp_path, seed=0, n_negatives=2)
  assert built == tt.training_examples(rows, seed=0, n_negatives=2)
  files = list(tmp_path.iterdir())
  assert len(files) == 1 and files[0].suffix == ".jsonl" and not files[0].name.startswith(".")

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt although cached")

  monkeypatch.setattr(tt, "training_examples", fail)
  start = time.perf_counter()
  assert tb.cached_training_examples(rows, tmp_path, seed=0, n_negatives=2) == built
  assert time.perf_counter() - start < 0.5
  # Anything the examples depend on is in the key.
  key = tb.training_examples_key(rows, 0, n_negatives=2)
  changed = [dict(rows[0], findings=rows[0]["findings"] + " Stable."), *rows[1:]]
  assert len({key, tb.training_examples_key(rows, 1, n_negatives=2), tb.training_examples_key(rows, 0),
              tb.training_examples_key(changed, 0, n_negatives=2),
              tb.training_examples_key(rows, 0, n_negatives=2, exclude={"a", "b"})}) == 5
  assert tb.training_examples_key(rows, 0, exclude={"b", "a"}) == tb.training_examples_key(rows, 0, exclude=["a", "b"])
  monkeypatch.setattr(tb, "CACHE_VERSION", tb.CACHE_VERSION + 1)
  assert tb.training_examples_key(rows, 0, n_negatives=2) != key


def test_batches_pad_to_the_global_batch_longest_rounded_up():
  """Every process pads to the same L: the longest text of the *global* batch, rounded up to
  length_multiple (so that slices concatenate to the one-process batch), never past max_length."""
  examples = _examples()
  for multiple, max_length in ((4, 64), (0, 24), (8, 10)):
    make = lambda: tb.SupervisedBatches(examples, _words(max_length), 4, max_length, seed=0, n_negatives=2,
                                        length_multiple=multiple)
    batches = _check_slices_and_resume(make, steps=range(4))
    maker = make()
    for s, b in enumerate(batches):
      rows = [examples[i] for i in maker.indices(s)]
      texts = [e.positive for e in rows] + [n for e in rows for n in e.negatives[:2]]
      longest = max([len(ids) for ids, _ in maker.tokenizer.encode_rows(texts)] +
                    [len(ids) for ids, _ in maker.tokenizer.encode_rows([e.query for e in rows],
                                                                         [e.instruction for e in rows])])
      want = max_length if not multiple else min(max_length, -(-longest // multiple) * multiple)
      assert b["query_input_ids"].shape[1] == b["negative_input_ids"].shape[2] == want, (multiple, longest)
  texts = REPORTS * 2
  b = tb.SimcseBatches(texts, _words(64), 4, 64, seed=0, length_multiple=4).batch(0)
  assert b["input_ids"].shape[1] % 4 == 0 and b["input_ids"].shape[1] - b["attention_mask"].sum(1).max() < 4
