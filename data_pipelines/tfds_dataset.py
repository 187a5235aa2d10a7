"""The prepared dataset's on-disk form: a TFDS dataset in ArrayRecord shards, plus sidecar metadata.

    OUTPUT/summary.json                       records per split, every skip with its reason
    OUTPUT/metadata/{split}.jsonl             per record, in record order: texts, ids, labels
    OUTPUT/tfds/cxr_clip/1.0.0/               a TFDS dataset (dataset_info.json, features.json,
        cxr_clip-{split}.array_record-{k}-of-{K})   readable by `tfds.builder_from_directory`
    OUTPUT/work/{split}-{k}-of-{K}.json       done-marker per shard (resume): counts, skips
    OUTPUT/work/{split}-{k}-of-{K}.records.jsonl   that shard's metadata lines

Shards are written by parallel workers with TFDS's own example serializer and file naming, then
described with `tfds.folder_dataset.write_metadata` (TFDS's route for shards written outside a
builder). TFDS's `GeneratorBasedBuilder` is not used to write: its non-Beam writer runs in one
process, is not resumable, and with shuffling disabled it sorts each on-disk bucket in memory. The
features are bytes and tensors only (TFDS's Image feature needs TensorFlow). Everything here reads
and writes without TensorFlow.
"""
from __future__ import annotations

import json
import os
import pathlib
import numpy as np

NAME = "cxr_clip"
VERSION = "1.0.0"
TEXT_FIELDS = ("report", "report_tagged", "findings", "impression", "study_id", "patient_id", "dataset")
NUM_LABELS = 14


def features():
  """The record schema as TFDS features (strings are UTF-8 bytes)."""
  import tensorflow_datasets as tfds  # Deferred: 0.5 s to import, and readers only need `parse`.
  feature = tfds.features

  def string():
    return feature.Tensor(shape=(), dtype=np.object_)

  return feature.FeaturesDict({
      "images": feature.Sequence(string()),       # 8-bit grayscale PNGs, (S, S), frontal first
      "image_paths": feature.Sequence(string()),  # source paths relative to the dataset root
      "views": feature.Sequence(string()),        # "PA", "AP", "LATERAL", "" (unknown)
      **{name: string() for name in TEXT_FIELDS},
      "labels": feature.Tensor(shape=(NUM_LABELS,), dtype=np.int8),  # labels.FINDINGS order
  })


def tfds_dir(output: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(output) / "tfds" / NAME / VERSION


def shard_name(split: str, index: int, count: int) -> str:
  return f"{NAME}-{split}.array_record-{index:05d}-of-{count:05d}"


class ShardWriter:
  """Writes serialized examples to a temporary file, renamed into place only when complete."""

  def __init__(self, path: pathlib.Path, feature_dict):
    from array_record.python.array_record_module import ArrayRecordWriter
    self.path = path
    self._tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    self._features = feature_dict
    # group_size:1 makes every record individually addressable: random access for shuffling.
    self._writer = ArrayRecordWriter(os.fspath(self._tmp), "group_size:1")
    self.num_bytes = 0
    self.num_records = 0

  def write(self, example: dict) -> None:
    data = self._features.serialize_example(example)
    self._writer.write(data)
    self.num_bytes += len(data)
    self.num_records += 1

  def close(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    self._writer.close()
    self._tmp.unlink(missing_ok=True)


def write_metadata(output: str | os.PathLike, shard_lengths: dict[str, list[int]],
                   num_bytes: dict[str, int], description: str) -> None:
  """dataset_info.json + features.json for the shards, so TFDS (and `split_files`) can read them."""
  import tensorflow_datasets as tfds
  directory = tfds_dir(output)
  template = tfds.core.ShardedFileTemplate(
      data_dir=directory, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=NAME, filetype_suffix="array_record")
  infos = [tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes[split],
                               filename_template=template.replace(split=split))
           for split, lengths in shard_lengths.items()]
  tfds.folder_dataset.write_metadata(data_dir=directory, features=features(), split_infos=infos,
                                     filename_template=template, check_data=False,
                                     description=description)


def split_files(data_dir: str | os.PathLike, split: str) -> list[str]:
  """The shard files of a split, in record order (TFDS reads dataset_info.json)."""
  import tensorflow_datasets as tfds
  directory = tfds_dir(data_dir)
  if not (directory / "dataset_info.json").is_file():
    raise FileNotFoundError(f"{data_dir} is not a prepared dataset (no {directory}/dataset_info.json); "
                            "run python -m data_pipelines.prepare first")
  splits = tfds.builder_from_directory(os.fspath(directory)).info.splits
  if split not in splits:
    raise KeyError(f"{data_dir} has no split {split!r} (has: {', '.join(splits.keys())})")
  return [os.fspath(p) for p in splits[split].filepaths]


def parse(raw: bytes) -> dict:
  """One serialized record -> {field: str | list | np.ndarray}, images left as PNG bytes.

  Reads the tf.train.Example proto directly: ~15 us against ~180 us for TFDS's generic numpy
  decoder, which matters at small image sizes. tests/test_data_prepare.py checks both agree.
  """
  from tensorflow_datasets.proto import tf_example_pb2  # The proto only; no TensorFlow.
  f = tf_example_pb2.Example.FromString(raw).features.feature
  out = {name: f[name].bytes_list.value[0].decode("utf-8") for name in TEXT_FIELDS}
  out["images"] = list(f["images"].bytes_list.value)
  out["image_paths"] = [v.decode("utf-8") for v in f["image_paths"].bytes_list.value]
  out["views"] = [v.decode("utf-8") for v in f["views"].bytes_list.value]
  out["labels"] = np.asarray(f["labels"].int64_list.value, np.int8)  # (14,)
  return out


def read_metadata(data_dir: str | os.PathLike, split: str) -> list[dict]:
  """The sidecar metadata of a split, in record order (no image is read)."""
  path = pathlib.Path(data_dir) / "metadata" / f"{split}.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; is {data_dir} a prepared dataset?")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]
