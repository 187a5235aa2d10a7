"""Per-record Grain transforms: a stored record (serialized bytes) to fixed-shape numpy arrays.

Each transform is a `grain.transforms.RandomMap`: Grain hands it a generator derived from the
pipeline seed and the element's position, so outputs do not depend on the number of workers and
replay exactly after a checkpoint restore. An element whose `raw` is None is evaluation padding: it
becomes a well-formed row with `valid` False (an empty text, a black image), never data.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import grain
import numpy as np

from data_pipelines import image_augment, images, reports, tfds_dataset
from data_pipelines.sources.schema import is_frontal
from data_pipelines.tokenization import Llm2VecTokenizer

IGNORE_INDEX = -100  # Label of unmasked positions (HF / llm2vec convention).


def stable_id(text: str) -> int:
  """A process- and run-independent 31-bit id (Python's hash() is salted per process)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "little") & 0x7FFFFFFF


def text_id(report: str) -> int:
  """Same id for reports equal up to case and whitespace (multi-positive losses, de-duplication).
  31 bits: among 1.6M distinct reports ~600 pairs collide, ~1e-4 chance per batch of 512."""
  return stable_id(" ".join(report.lower().split()))


def study_hash(dataset: str, study: str) -> int:
  return stable_id(f"{dataset}/{study}")


def first_frontal(views: Sequence[str]) -> int:
  return next((i for i, v in enumerate(views) if is_frontal(v)), 0)


def fit_tokenizer(tokenizer: Llm2VecTokenizer | None, max_length: int) -> Llm2VecTokenizer | None:
  """The tokenizer truncating at `max_length`, so every row fits the fixed (max_length,) shape."""
  if tokenizer is None or tokenizer.max_length <= max_length:
    return tokenizer
  return dataclasses.replace(tokenizer, max_length=max_length)


def tokenize(tokenizer: Llm2VecTokenizer, text: str, instruction: str, max_length: int,
             prefix: str = "") -> dict[str, np.ndarray]:
  """int32 (max_length,) input_ids / attention_mask / embed_mask for one text."""
  batch = tokenizer([text], instruction, pad_to=max_length)
  return {prefix + k: v[0] for k, v in batch.items()}


class ClipExample(grain.transforms.RandomMap):
  """Record -> image uint8 (S, S), tokens, ids, labels, valid (`NormalizeImages` finishes images)."""

  def __init__(self, *, image_size: int, train: bool, augment_images: bool,
               augment_config: image_augment.AugmentConfig, tokenizer: Llm2VecTokenizer | None,
               max_length: int, instruction: str, shuffle_p: float):
    self.image_size, self.train, self.augment_images = image_size, train, augment_images
    self.augment_config, self.tokenizer, self.max_length = augment_config, tokenizer, max_length
    self.instruction, self.shuffle_p = instruction, shuffle_p

  def _image(self, record: dict, rng: np.random.Generator) -> np.ndarray:
    # Training sees every view of a study; evaluation its first frontal one, always the same.
    i = int(rng.integers(len(record["images"]))) if self.train else first_frontal(record["views"])
    pixels = images.decode_png(record["images"][i], self.image_size)  # uint8 (S, S)
    return image_augment.augment(pixels, rng, self.augment_config) if self.augment_images else pixels

  def _tokens(self, text: str) -> dict[str, np.ndarray]:
    return tokenize(self.tokenizer, text, self.instruction, self.max_length) if self.tokenizer else {}

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if element["raw"] is None:
      return {"image": np.zeros((self.image_size, self.image_size), np.uint8), **self._tokens(""),
              "record_index": np.int32(0), "dataset_index": np.int32(0), "text_id": np.int32(-1),
              "study_id": np.int32(-1), "labels": np.zeros(tfds_dataset.NUM_LABELS, np.int8),
              "valid": np.bool_(False)}
    record = tfds_dataset.parse(element["raw"])
    text = record["report_tagged"] or record["report"]
    if self.train and self.shuffle_p > 0:
      text = reports.augment(text, rng, shuffle_p=self.shuffle_p)
    return {"image": self._image(record, rng), **self._tokens(text),
            "record_index": np.int32(element["record_index"]),
            "dataset_index": np.int32(element["dataset_index"]),
            "text_id": np.int32(text_id(record["report"])),
            "study_id": np.int32(study_hash(record["dataset"], record["study_id"])),
            "labels": record["labels"], "valid": np.bool_(True)}


class NormalizeImages(grain.transforms.Map):
  """Batch image uint8 (B, S, S) -> float32 (B, S, S, 3), (x / 255 - mean) / std.

  Runs once per batch in the consuming process, after the worker processes: rows travel between
  processes as 8-bit pixels, 12x fewer bytes than float RGB (writing float32 into shared memory
  costs more than the decoding itself).
  """

  def __init__(self, mean: float, std: float):
    self.mean, self.std = mean, std

  def map(self, batch: dict) -> dict:
    return {**batch, "image": image_augment.normalize(batch["image"], self.mean, self.std)}


def mntp_mask(input_ids: np.ndarray, attention_mask: np.ndarray, rng: np.random.Generator, *,
              mask_token_id: int, vocab_size: int, special_ids: Sequence[int], mask_prob: float = 0.2,
              replace_prob: float = 0.8, random_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
  """HF DataCollatorForLanguageModeling's masking, as llm2vec's run_mntp.py uses it, on one row.

  Each real, non-special token is selected with `mask_prob`; selected tokens become the mask token
  (`replace_prob`), a uniformly random token (`random_prob`) or stay (the rest). Labels hold the
  original id at selected positions and -100 elsewhere. (Predicting token i from position i-1 is
  the loss's business, not the data's.) int32 (L,) -> (inputs, labels), both int32 (L,).
  """
  candidates = attention_mask.astype(bool) & ~np.isin(input_ids, np.asarray(special_ids, np.int64))
  selected = candidates & (rng.random(input_ids.shape) < mask_prob)
  labels = np.where(selected, input_ids, IGNORE_INDEX).astype(np.int32)
  u = rng.random(input_ids.shape)
  random_tokens = rng.integers(0, vocab_size, size=input_ids.shape)
  inputs = np.where(selected & (u < replace_prob), mask_token_id, input_ids)
  inputs = np.where(selected & (u >= replace_prob) & (u < replace_prob + random_prob), random_tokens, inputs)
  return inputs.astype(np.int32), labels


class MntpExample(grain.transforms.RandomMap):
  """Record -> masked input_ids, attention_mask, embed_mask, labels (int32 (L,)), ids, valid."""

  def __init__(self, *, tokenizer: Llm2VecTokenizer, max_length: int, text_field: str, mask_kwargs: dict):
    self.tokenizer, self.max_length = tokenizer, max_length
    self.text_field, self.mask_kwargs = text_field, mask_kwargs

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    record = tfds_dataset.parse(element["raw"]) if element["raw"] is not None else None
    tokens = tokenize(self.tokenizer, record[self.text_field] if record else "", "", self.max_length)
    inputs, labels = mntp_mask(tokens["input_ids"], tokens["attention_mask"], rng, **self.mask_kwargs)
    if record is None:
      labels[:] = IGNORE_INDEX
    return {**tokens, "input_ids": inputs, "labels": labels,
            "record_index": np.int32(element["record_index"]),
            "dataset_index": np.int32(element["dataset_index"]),
            "text_id": np.int32(text_id(record["report"]) if record else -1),
            "valid": np.bool_(record is not None)}


class TextPairExample(grain.transforms.RandomMap):
  """Record -> (query, positive, hard negative) token rows for supervised contrastive training.

  The query is the tagged report (with `instruction`); the positive a meaning-preserving variant
  of it (abbreviated/expanded, reordered, a section dropped; the report itself if none applies);
  the negative the report with exactly one injected error (`variants.hard_negative`), or, when no
  error can be injected, another report of the same split (`negative_kind` -1).
  """

  def __init__(self, *, tokenizer: Llm2VecTokenizer, max_length: int, instruction: str,
               split_files: Sequence[Sequence[str]]):
    self.tokenizer, self.max_length, self.instruction = tokenizer, max_length, instruction
    self.split_files = [list(f) for f in split_files]
    self._sources = None  # Opened lazily in each worker.

  def _other_report(self, element: dict, rng: np.random.Generator) -> str:
    if self._sources is None:
      self._sources = [grain.sources.ArrayRecordDataSource(f) for f in self.split_files]
    source = self._sources[element["dataset_index"]]
    other = (element["record_index"] + 1 + int(rng.integers(max(len(source) - 1, 1)))) % len(source)
    record = tfds_dataset.parse(source[other])
    return record["report_tagged"] or record["report"]

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    from data_pipelines import variants  # Deferred: only text-pair pipelines need it.
    ids = {"record_index": np.int32(element["record_index"]),
           "dataset_index": np.int32(element["dataset_index"])}
    if element["raw"] is None:
      texts, kind, tid, valid = ("", "", ""), -1, -1, False
    else:
      record = tfds_dataset.parse(element["raw"])
      query = record["report_tagged"] or record["report"]
      options = variants.positives(query, rng)
      positive = options[int(rng.integers(len(options)))].text if options else query
      negative = variants.hard_negative(query, rng)
      if negative is not None:
        texts, kind = (query, positive, negative.text), variants.ERROR_TYPES.index(negative.kind)
      else:
        texts, kind = (query, positive, self._other_report(element, rng)), -1
      tid, valid = text_id(record["report"]), True
    out = {**ids, "negative_kind": np.int8(kind), "text_id": np.int32(tid), "valid": np.bool_(valid)}
    for prefix, text, instruction in zip(("query_", "positive_", "negative_"), texts, (self.instruction, "", "")):
      out.update(tokenize(self.tokenizer, text, instruction, self.max_length, prefix))
    return out
