"""Grain pipelines over prepared data: the CLIP batch contract, determinism, exact resume with worker
processes, per-process sharding, mixing, MNTP masking, text triplets, and no jax import."""
import collections
import subprocess
import sys

import grain
import numpy as np
import pytest
from absl import flags

import data_fixtures as fx
from data_pipelines import image_augment, images, pipelines, prepare, tfds_dataset
from data_pipelines.pipeline_transforms import IGNORE_INDEX, mntp_mask
from data_pipelines.tokenization import Llm2VecTokenizer

flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.
MAX_LENGTH = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Two prepared datasets: 24 studies (16 train) and 12 studies (8 train), 32 px."""
  root = tmp_path_factory.mktemp("data")
  dirs = []
  for name, n in (("a", 24), ("b", 12)):
    src = fx.manifest(root / f"src_{name}", n=n)
    prepare.run(prepare.Options("manifest", str(root / name), str(src), image_size=32, shard_size=5))
    dirs.append(str(root / name))
  return dirs


@pytest.fixture(scope="module")
def tokenizer():
  return Llm2VecTokenizer(fx.WordTokenizer(), max_length=MAX_LENGTH, wrapper="none")


def _clip(data_dir, tokenizer=None, split="train", **kw):
  args = dict(batch_size=4, image_size=32, tokenizer=tokenizer, max_length=MAX_LENGTH, seed=0, train=True)
  return pipelines.clip_dataset(data_dir, split, **{**args, **kw})


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_clip_batch_contract(data, tokenizer):
  batch = next(iter(_clip(data[0], tokenizer)))
  expected = {"image": ((4, 32, 32, 3), np.float32), "input_ids": ((4, MAX_LENGTH), np.int32),
              "attention_mask": ((4, MAX_LENGTH), np.int32), "embed_mask": ((4, MAX_LENGTH), np.int32),
              "record_index": ((4,), np.int32), "dataset_index": ((4,), np.int32), "text_id": ((4,), np.int32),
              "study_id": ((4,), np.int32), "labels": ((4, 14), np.int8), "valid": ((4,), np.bool_)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  assert batch["valid"].all() and (batch["embed_mask"] <= batch["attention_mask"]).all()
  meta = pipelines.read_split(data[0], "train")
  for i, record in enumerate(batch["record_index"]):
    assert batch["text_id"][i] == meta[record]["text_id"] and batch["study_id"][i] == meta[record]["study_id"]
    np.testing.assert_array_equal(batch["labels"][i], meta[record]["labels"])
  raw = next(iter(_clip(data[0], normalize_images=False)))
  assert raw["image"].shape == (4, 32, 32) and raw["image"].dtype == np.uint8 and "input_ids" not in raw
  np.testing.assert_array_equal(next(iter(_clip(data[0])))["image"], image_augment.normalize(raw["image"]))


def test_same_seed_same_batches_other_seed_other_order(data, tokenizer):
  first = _take(iter(_clip(data[0], tokenizer)), 3)
  _equal(first, _take(iter(_clip(data[0], tokenizer)), 3))
  other = _take(iter(_clip(data[0], tokenizer, seed=1)), 3)
  assert [b["record_index"].tolist() for b in first] != [b["record_index"].tolist() for b in other]


def test_two_workers_match_serial_and_resume_exactly(data, tokenizer):
  serial = _take(iter(_clip(data, tokenizer, weights=[2, 1])), 7)
  ds = _clip(data, tokenizer, weights=[2, 1], worker_count=2)
  it = iter(ds)
  _equal(_take(it, 3), serial[:3])
  state = it.get_state()
  _equal(_take(it, 4), serial[3:])
  it.close()
  resumed = iter(ds)
  resumed.set_state(state)
  _equal(_take(resumed, 4), serial[3:])
  resumed.close()


def test_evaluation_is_ordered_padded_and_not_augmented(data, tokenizer):
  meta = pipelines.read_split(data[0], "validation")  # 5 records -> batches of 3: 3 + (2 + 1 padding)
  batches = list(_clip(data[0], tokenizer, split="validation", batch_size=3, train=False))
  assert [b["valid"].tolist() for b in batches] == [[True] * 3, [True, True, False]]
  assert [b["record_index"][b["valid"]].tolist() for b in batches] == [[0, 1, 2], [3, 4]]
  again = list(_clip(data[0], tokenizer, split="validation", batch_size=3, train=False, seed=5))
  _equal(batches, again)  # No randomness in evaluation, whatever the seed.
  source = grain.sources.ArrayRecordDataSource(tfds_dataset.split_files(data[0], "validation"))
  stored = images.decode_png(tfds_dataset.parse(source[0])["images"][0])
  np.testing.assert_allclose(batches[0]["image"][0], image_augment.normalize(stored), atol=1e-6)
  want = tokenizer([meta[0]["report_tagged"]], "", pad_to=MAX_LENGTH)  # Tagged text, not shuffled.
  np.testing.assert_array_equal(batches[0]["input_ids"][0], want["input_ids"][0])
  assert batches[1]["text_id"][2] == -1 and (batches[1]["image"][2] == -1).all()  # Black, masked.


def test_process_shards_cover_every_record_once(data):
  seen, counts = [], []
  for p in range(3):
    batches = list(_clip(data[0], split="validation", batch_size=3, train=False, process_index=p, process_count=3))
    counts.append(len(batches))
    seen += [i for b in batches for i in b["record_index"][b["valid"]].tolist()]
  assert sorted(seen) == list(range(5)) and len(set(counts)) == 1
  # Training: each process reads its rows of every global batch, so two processes together read
  # exactly the batches one process reads (14 records, global batch 4: 3 batches, disjoint halves).
  one = [b["record_index"].tolist() for b in _clip(data[0], batch_size=4, num_epochs=1)]
  two = [[b["record_index"].tolist() for b in _clip(data[0], batch_size=4, process_index=p, process_count=2,
                                                      num_epochs=1)] for p in range(2)]
  assert len(one) == len(two[0]) == len(two[1]) == 3
  assert [a + b for a, b in zip(*two)] == one
  assert len({i for b in one for i in b}) == 12


def test_epochs_are_reshuffled(data):
  order = [i for b in _clip(data[0], batch_size=2, num_epochs=2) for i in b["record_index"].tolist()]
  assert sorted(order[:14]) == sorted(order[14:]) == list(range(14)) and order[:14] != order[14:]


def test_mixing_follows_weights(data):
  it = iter(_clip(data, batch_size=8, weights=[3, 1]))
  sources = collections.Counter(i for b in _take(it, 12) for i in b["dataset_index"].tolist())
  assert 0.65 < sources[0] / 96 < 0.85


def test_mntp_mask_follows_the_80_10_10_convention():
  rng = np.random.default_rng(0)
  ids = rng.integers(10, 1000, size=200_000)
  ids[:1000] = 1  # special
  attention = np.ones_like(ids)
  attention[-1000:] = 0  # padding
  inputs, labels = mntp_mask(ids, attention, rng, mask_token_id=5, vocab_size=1000, special_ids=[1, 2])
  selected = labels != IGNORE_INDEX
  assert not selected[:1000].any() and not selected[-1000:].any()
  assert abs(selected.mean() - 0.2 * 198_000 / 200_000) < 0.005
  np.testing.assert_array_equal(labels[selected], ids[selected])
  masked, kept = inputs[selected] == 5, inputs[selected] == ids[selected]
  assert abs(masked.mean() - 0.8) < 0.01 and abs(kept.mean() - 0.1) < 0.01  # ~0.1 random (1/1000 agree)
  np.testing.assert_array_equal(inputs[~selected], ids[~selected])


def test_mntp_dataset(data, tokenizer):
  kw = dict(batch_size=4, tokenizer=tokenizer, max_length=MAX_LENGTH, seed=0, mask_token_id=7)
  batch = next(iter(pipelines.mntp_dataset(data[0], "train", train=True, **kw)))
  assert {k: v.shape for k, v in batch.items()} == {
      "input_ids": (4, MAX_LENGTH), "attention_mask": (4, MAX_LENGTH), "embed_mask": (4, MAX_LENGTH),
      "labels": (4, MAX_LENGTH), "record_index": (4,), "dataset_index": (4,), "text_id": (4,), "valid": (4,)}
  assert (batch["labels"] != IGNORE_INDEX).any()
  assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
  evaluation = list(pipelines.mntp_dataset(data[0], "validation", train=False, **kw))
  _equal(evaluation, list(pipelines.mntp_dataset(data[0], "validation", train=False, **kw)))


def test_text_pairs(data, tokenizer):
  batch = next(iter(pipelines.text_pair_dataset(data[0], "train", batch_size=4, tokenizer=tokenizer,
                                                max_length=MAX_LENGTH, seed=0, train=True, instruction="Find")))
  for role in ("query", "positive", "negative"):
    assert batch[f"{role}_input_ids"].shape == (4, MAX_LENGTH)
  assert batch["negative_kind"].dtype == np.int8
  assert (batch["query_input_ids"] != batch["negative_input_ids"]).any(axis=1).all()
  # The instruction is attended to but not pooled: the query has more real than pooled tokens.
  assert (batch["query_attention_mask"].sum(1) > batch["query_embed_mask"].sum(1)).all()


def test_real_tokenizer(data, asset):
  tok = Llm2VecTokenizer.from_model_dir(asset("smollm2"), max_length=512)
  batch = next(iter(_clip(data[0], tok, split="validation", train=False, max_length=64)))
  row = batch["input_ids"][0][batch["attention_mask"][0] == 1]
  text = pipelines.read_split(data[0], "validation")[0]["report_tagged"]
  assert tok.tokenizer.decode(row, skip_special_tokens=True).strip() == text
  assert pipelines.mask_token_id(tok.tokenizer) == tok.tokenizer.convert_tokens_to_ids("_")


_NO_JAX_IMPORTER = """
import importlib, importlib.abc, pkgutil, sys
offenders = []

class Watch(importlib.abc.MetaPathFinder):
  # Records which module's code asked for jax; the import itself proceeds as usual.
  def find_spec(self, name, path=None, target=None):
    if name == "jax":
      frame = sys._getframe(1)
      while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        frame = frame.f_back
      offenders.append(frame.f_globals.get("__name__", "?") if frame else "?")
    return None

sys.meta_path.insert(0, Watch())
import data_pipelines, data_pipelines.sources
for pkg in (data_pipelines, data_pipelines.sources):
  for m in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(pkg.__name__ + "." + m.name)
ours = [o for o in offenders if not o.startswith("grain.")]
assert not ours, ours
assert "tensorflow" not in sys.modules
"""


def test_importing_data_pipelines_does_not_import_jax():
  # Grain 0.2.x itself imports jax.tree_util when jax is installed (grain/_src/core/tree_lib.py);
  # what must hold is that no data_pipelines module asks for jax.
  proc = subprocess.run([sys.executable, "-c", _NO_JAX_IMPORTER], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
