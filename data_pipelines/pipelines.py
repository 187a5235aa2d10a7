"""Grain input pipelines over prepared datasets (see prepare.py): numpy batches of fixed shape.

    train: source -> shuffle(seed) -> repeat -> [mix] -> map(decode, augment, tokenize)
           -> this process's rows of each global batch -> batch -> mp_prefetch
    eval:  source -> this process's records (strided, padded) -> map -> batch

Batching happens on the MapDataset, so a batch is one indexable element: the stream is the same
for any `worker_count`, and the iterator state (`it.get_state()` / `it.set_state()`) restores it
mid-epoch exactly. Each JAX process reads its own share (`process_index`, `process_count` are
passed in: this package never imports jax, though Grain 0.2 imports jax.tree_util itself when jax
is installed) and yields batch_size / process_count rows: in training, its rows of the global
batch one process would read, so the run does not depend on the process count; evaluation pads the last batch with rows whose `valid` is False. Images travel as uint8 and are
normalized to float32 RGB per batch in the consuming process (`NormalizeImages`).

Worker processes (worker_count > 0) read absl flags at start: parse flags first (absl.app.run,
or absl.flags.FLAGS.mark_as_parsed() in scripts and tests).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Sequence

import grain
import numpy as np

from data_pipelines import image_augment, tfds_dataset
from data_pipelines.pipeline_transforms import (
    ClipExample, MntpExample, NormalizeImages, TextPairExample, fit_tokenizer, stable_id, study_hash,
    text_id)
from data_pipelines.tokenization import Llm2VecTokenizer


def split_sizes(data_dir: str) -> dict[str, int]:
  """Records per split of a prepared dataset."""
  path = pathlib.Path(data_dir) / "summary.json"
  try:
    summary = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f"{data_dir} is not a prepared dataset ({path}: {e})") from None
  if summary.get("status") != "ok":
    raise ValueError(f"{data_dir}: preparation did not finish ({summary.get('status')}); see {path}")
  return dict(summary["records"])


def read_split(data_dir: str, split: str) -> list[dict]:
  """Every record's metadata, in record order, without reading images.

  Keys: record_index, report, report_tagged, findings, impression, labels (int8 (14,)), views,
  image_paths, dataset, patient_id, text_id and study_id (the int ids batches carry), study_name
  (the dataset's own study id).
  """
  rows = tfds_dataset.read_metadata(data_dir, split)
  for i, row in enumerate(rows):
    row["study_name"] = row["study_id"]
    row.update(record_index=i, text_id=text_id(row["report"]),
               study_id=study_hash(row["dataset"], row["study_id"]),
               labels=np.asarray(row["labels"], np.int8))
  return rows


class _Tag(grain.transforms.MapWithIndex):
  """Raw record -> {raw, record_index, dataset_index}; applied before any reordering."""

  def __init__(self, dataset_index: int, num_records: int):
    self.dataset_index, self.num_records = dataset_index, num_records

  def map_with_index(self, index: int, element: bytes) -> dict:
    # Grain indexes later epochs past the end (epoch * length + i); the record is i.
    return {"raw": element, "record_index": index % self.num_records, "dataset_index": self.dataset_index}


class _PadTo(grain.MapDataset):
  """Extends a dataset to `length` with padding elements (raw None) for a final full batch."""

  def __init__(self, parent: grain.MapDataset, length: int):
    super().__init__(parent)
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index < len(self._parent):
      return self._parent[index]
    return {"raw": None, "record_index": 0, "dataset_index": 0}

  def __str__(self) -> str:
    return f"_PadTo({self._length})"


class _ProcessRows(grain.MapDataset):
  """Rows [p * B/P, (p+1) * B/P) of every global batch of B: process p's share of the stream."""

  def __init__(self, parent: grain.MapDataset, batch_size: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._global, self._local = batch_size, batch_size // process_count
    self._offset = process_index * self._local

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[batch * self._global + self._offset + row]

  def __str__(self) -> str:
    return f"_ProcessRows({self._offset}:{self._offset + self._local} of {self._global})"


def _records(data_dir: str, split: str, dataset_index: int) -> grain.MapDataset:
  source = grain.sources.ArrayRecordDataSource(tfds_dataset.split_files(data_dir, split))
  return grain.MapDataset.source(source).map_with_index(_Tag(dataset_index, len(source)))


def _seed(seed: int, *salt) -> int:
  return stable_id(f"{seed}/{'/'.join(map(str, salt))}")


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How records become batches; shared by every pipeline kind."""
  batch_size: int
  seed: int
  train: bool
  process_index: int = 0
  process_count: int = 1
  worker_count: int = 0
  weights: Sequence[float] | None = None
  num_epochs: int | None = None


def _build(data_dirs: Sequence[str] | str, split: str, layout: _Layout,
           transform: grain.transforms.RandomMap,
           finish: grain.transforms.Map | None = None) -> grain.IterDataset:
  """`transform` runs per record (in worker processes, if any); `finish` per batch, after them."""
  data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
  if layout.batch_size % layout.process_count:
    raise ValueError(f"batch_size={layout.batch_size} is not divisible by process_count={layout.process_count}")
  if not 0 <= layout.process_index < layout.process_count:
    raise ValueError(f"process_index={layout.process_index} not in [0, {layout.process_count})")
  local = layout.batch_size // layout.process_count
  parts = [_records(d, split, k) for k, d in enumerate(data_dirs)]
  if layout.train:
    # One global stream, the same on every process: each takes its rows of every global batch, so
    # N processes see exactly the batches one process would (and together read every record once).
    shuffled = [ds.shuffle(seed=_seed(layout.seed, "shuffle", k)).repeat(layout.num_epochs)  # reshuffled per epoch
                for k, ds in enumerate(parts)]
    if layout.weights is not None and len(layout.weights) != len(shuffled):
      raise ValueError(f"{len(layout.weights)} weights for {len(shuffled)} datasets")
    ds = shuffled[0] if len(shuffled) == 1 else grain.MapDataset.mix(shuffled, layout.weights)
    ds = ds.random_map(transform, seed=_seed(layout.seed, "map"))  # keyed by global index
    ds = _ProcessRows(ds, layout.batch_size, layout.process_index, layout.process_count)
  else:
    ds = grain.MapDataset.concatenate(parts) if len(parts) > 1 else parts[0]
    total = len(ds)
    # Every process gets ceil(total / count) slots rounded up to whole batches: equal batch counts.
    mine = slice(layout.process_index, None, layout.process_count)
    ds = _PadTo(ds[mine], math.ceil(math.ceil(total / layout.process_count) / local) * local)
    ds = ds.random_map(transform, seed=_seed(layout.seed, "map"))
  ds = ds.batch(local, drop_remainder=layout.train)
  # Elements are whole batches: a few in flight, a small buffer (these are large arrays).
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2 if layout.worker_count == 0 else 1,
                                            prefetch_buffer_size=2))
  if layout.worker_count > 0:
    _require_parsed_flags()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=layout.worker_count, per_worker_buffer_size=2))
  return it.map(finish) if finish is not None else it


def _require_parsed_flags() -> None:
  from absl import flags
  if not flags.FLAGS.is_parsed():
    raise RuntimeError("worker_count > 0 starts Grain worker processes, which read absl flags: parse "
                       "flags first (absl.app.run, or absl.flags.FLAGS.mark_as_parsed())")


def clip_dataset(data_dirs: Sequence[str] | str, split: str, *, batch_size: int, image_size: int,
                 tokenizer: Llm2VecTokenizer | None, max_length: int, seed: int, train: bool,
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                 weights: Sequence[float] | None = None, mean: float = 0.5, std: float = 0.5,
                 shuffle_p: float = 0.3, augment_images: bool | None = None, instruction: str = "",
                 num_epochs: int | None = None,
                 augment_config: image_augment.AugmentConfig = image_augment.AugmentConfig(),
                 normalize_images: bool = True) -> grain.IterDataset:
  """Image-report batches for the CLIP stage.

  Each batch (batch_size / process_count rows, B):
    image          float32 (B, S, S, 3): (x - mean) / std, gray in 3 channels; training picks a
                   random view of the study and augments it, evaluation its first frontal view
    input_ids, attention_mask, embed_mask   int32 (B, max_length), when a tokenizer is given;
                   the tagged report, sentence-shuffled per section (p=shuffle_p) in training
    record_index   int32 (B,) index within its split; dataset_index int32 (B,) into data_dirs
    text_id        int32 (B,) equal for equal (normalized) reports; study_id int32 (B,) study hash
    labels         int8 (B, 14) finding labels in labels.FINDINGS order
    valid          bool (B,): False only on evaluation padding rows
  Training shuffles every epoch, repeats num_epochs times (None: forever), drops the remainder and
  mixes several datasets by `weights`; evaluation is one ordered pass padded to whole batches.
  normalize_images=False leaves `image` as stored, uint8 (B, S, S), for normalizing and making
  3 channels on the device: 12x fewer bytes per batch on the host and over the host-device link.
  """
  transform = ClipExample(
      image_size=image_size, train=train, augment_images=train if augment_images is None else augment_images,
      augment_config=augment_config, tokenizer=fit_tokenizer(tokenizer, max_length), max_length=max_length,
      instruction=instruction, shuffle_p=shuffle_p if train else 0.0)
  layout = _Layout(batch_size, seed, train, process_index, process_count, worker_count, weights,
                   num_epochs if train else 1)
  return _build(data_dirs, split, layout, transform, NormalizeImages(mean, std) if normalize_images else None)


def mntp_dataset(data_dirs: Sequence[str] | str, split: str, *, batch_size: int,
                 tokenizer: Llm2VecTokenizer, max_length: int, seed: int, train: bool,
                 mask_token_id: int, mask_prob: float = 0.2, replace_prob: float = 0.8,
                 random_prob: float = 0.1, vocab_size: int | None = None,
                 special_ids: Sequence[int] | None = None, text_field: str = "report",
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                 weights: Sequence[float] | None = None, num_epochs: int | None = None) -> grain.IterDataset:
  """Masked-next-token-prediction batches of reports (llm2vec's MNTP data, one report per row).

  Batch: input_ids (masked), attention_mask, embed_mask, labels (-100 where not masked): int32
  (B, max_length); record_index, dataset_index, text_id int32 (B,); valid bool (B,). Masks are
  drawn from the seed, evaluation included, so an evaluation loss is reproducible.

  Args:
    mask_token_id: Llama has no mask token; llm2vec uses "_" (`mask_token_id(hf_tokenizer)`).
    vocab_size, special_ids: default to the HF tokenizer's len() and all_special_ids (bos, eos and
      pad are never masked, as HF's collator skips special tokens).
  """
  hf = tokenizer.tokenizer
  mask_kwargs = dict(mask_token_id=mask_token_id, mask_prob=mask_prob, replace_prob=replace_prob,
                     random_prob=random_prob, vocab_size=vocab_size or len(hf),
                     special_ids=tuple(special_ids if special_ids is not None else hf.all_special_ids))
  transform = MntpExample(tokenizer=fit_tokenizer(tokenizer, max_length), max_length=max_length,
                          text_field=text_field, mask_kwargs=mask_kwargs)
  layout = _Layout(batch_size, seed, train, process_index, process_count, worker_count, weights,
                   num_epochs if train else 1)
  return _build(data_dirs, split, layout, transform)


def mask_token_id(hf_tokenizer, kind: str = "blank") -> int:
  """llm2vec run_mntp.py's mask token when the tokenizer has none: "blank" is "_", "eos" the eos."""
  if hf_tokenizer.mask_token is not None:
    return hf_tokenizer.mask_token_id
  token = {"blank": "_", "eos": hf_tokenizer.eos_token}[kind]
  return hf_tokenizer.convert_tokens_to_ids(token)


def text_pair_dataset(data_dirs: Sequence[str] | str, split: str, *, batch_size: int,
                      tokenizer: Llm2VecTokenizer, max_length: int, seed: int, train: bool,
                      instruction: str = "", process_index: int = 0, process_count: int = 1,
                      worker_count: int = 0, weights: Sequence[float] | None = None,
                      num_epochs: int | None = None) -> grain.IterDataset:
  """(query, positive, hard negative) batches for supervised contrastive text training.

  Batch: {query,positive,negative}_{input_ids,attention_mask,embed_mask} int32 (B, max_length);
  negative_kind int8 (B,) index into variants.ERROR_TYPES (-1: another report, no error applied);
  record_index, dataset_index, text_id int32 (B,); valid bool (B,). Variants are drawn from the
  seed, so evaluation triplets are the same every time.
  """
  dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
  transform = TextPairExample(tokenizer=fit_tokenizer(tokenizer, max_length), max_length=max_length,
                              instruction=instruction,
                              split_files=[tfds_dataset.split_files(d, split) for d in dirs])
  layout = _Layout(batch_size, seed, train, process_index, process_count, worker_count, weights,
                   num_epochs if train else 1)
  return _build(dirs, split, layout, transform)
