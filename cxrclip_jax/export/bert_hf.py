"""HF BERT directories (e.g. sentence-transformers' all-MiniLM-L6-v2) <-> `BertTextEncoder`.

Weights go through one explicit key table (`keymap.to_flax` / `to_hf`: any missing, unused or
mis-shaped key is an error naming it). `BertModel` keys are read bare or under `bert.` (as the
`BertFor*` classes write them), whose task heads are declared optional keys and reported, never
silently dropped. Writes directories that `transformers.BertModel.from_pretrained` loads with no
missing or unexpected keys, plus the sentence-transformers pipeline files.

Tokenization is the directory's own `tokenizer.json` (`[CLS] text [SEP]` from its template), right
padded, truncated as HF truncates. Pooling, normalization and max length come from the directory's
sentence-transformers pipeline (`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`)
when it has one: all-MiniLM-L6-v2 mean-pools, L2-normalizes and truncates at 256 tokens, so its
embeddings here are unit vectors; a plain BertModel directory gives unnormalized mean-pooled ones.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxrclip_jax.eval.embedder import TextEmbedder
from cxrclip_jax.export import hf as hf_io
from cxrclip_jax.export import keymap, safetensors_io
from cxrclip_jax.models.bert import BERT_POOLING_MODES, BertConfig, BertTextEncoder
from data_pipelines.dir_tokenizer import DirTokenizer


def _rows(module: str, kind: str) -> tuple[keymap.Row, ...]:
  """Rows of one HF submodule; the Flax path is its name with '/' for '.' and `layer_{i}`."""
  path = module.replace("encoder.layer.{i}", "encoder.layer_{i}").replace(".", "/")
  if kind == "table":
    return ((f"{module}.weight", f"{path}/weight", False),)
  if kind == "norm":
    return ((f"{module}.weight", f"{path}/weight", False), (f"{module}.bias", f"{path}/bias", False))
  return ((f"{module}.weight", f"{path}/kernel", True), (f"{module}.bias", f"{path}/bias", False))


# HF BertModel key -> Flax path under BertModel. The pooler rows go unused without a pooler.
BERT_KEYS: tuple[keymap.Row, ...] = (
    *_rows("embeddings.word_embeddings", "table"),
    *_rows("embeddings.position_embeddings", "table"),
    *_rows("embeddings.token_type_embeddings", "table"),
    *_rows("embeddings.LayerNorm", "norm"),
    *_rows("encoder.layer.{i}.attention.self.query", "linear"),
    *_rows("encoder.layer.{i}.attention.self.key", "linear"),
    *_rows("encoder.layer.{i}.attention.self.value", "linear"),
    *_rows("encoder.layer.{i}.attention.output.dense", "linear"),
    *_rows("encoder.layer.{i}.attention.output.LayerNorm", "norm"),
    *_rows("encoder.layer.{i}.intermediate.dense", "linear"),
    *_rows("encoder.layer.{i}.output.dense", "linear"),
    *_rows("encoder.layer.{i}.output.LayerNorm", "norm"),
    *_rows("pooler.dense", "linear"),
)
BERT_PREFIX = "bert."  # BertForMaskedLM, BertForSequenceClassification, ... put the base model here
# Heads of the BertFor* classes (MLM / NSP / classification / QA), never part of the encoder.
HEAD_KEYS = (r"cls\..*", r"classifier\..*", r"qa_outputs\..*")
# Index buffers that transformers < 4.31 saved with the weights; transformers recomputes them.
BUFFER_KEYS = (r"embeddings\.position_ids", r"embeddings\.token_type_ids")
TOKENIZER_FILES = (*hf_io.TOKENIZER_FILES, "vocab.txt")


def table(hf_prefix: str = "", flax_prefix: str = "model/") -> tuple[keymap.Row, ...]:
  return tuple((hf_prefix + h, flax_prefix + f, t) for h, f, t in BERT_KEYS)


# ------------------------------------------------------------------ sentence-transformers pipeline
@dataclasses.dataclass(frozen=True)
class Pipeline:
  """What a sentence-transformers directory does after the transformer."""
  pooling: str = "mean"
  normalize: bool = False
  max_length: int = 512


_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def read_pipeline(model_dir) -> Pipeline:
  """The directory's sentence-transformers pipeline; a plain HF directory gets mean pooling, no
  normalization and max length = its position table. Modules we cannot reproduce are errors."""
  model_dir = pathlib.Path(model_dir)
  max_positions = hf_io.read_config(model_dir).get("max_position_embeddings", 512)
  modules_path = model_dir / "modules.json"
  if not modules_path.is_file():
    return Pipeline(max_length=max_positions)
  pooling, normalize = "mean", False
  for m in json.loads(modules_path.read_text()):
    kind = m["type"].rsplit(".", 1)[-1]
    if kind == "Transformer":
      if m.get("path", ""):
        raise ValueError(f"{model_dir}: the transformer lives in {m['path']!r}; pass that directory")
    elif kind == "Pooling":
      cfg = json.loads((model_dir / m["path"] / "config.json").read_text())
      modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v is True]
      if len(modes) != 1 or modes[0] not in _ST_POOLING:
        raise ValueError(f"{model_dir}: sentence-transformers pooling {modes} is not supported "
                         f"(one of {', '.join(_ST_POOLING)})")
      pooling = _ST_POOLING[modes[0]]
    elif kind == "Normalize":
      normalize = True
    else:
      raise ValueError(f"{model_dir}: sentence-transformers module {m['type']!r} is not supported")
  st = model_dir / "sentence_bert_config.json"
  max_length = json.loads(st.read_text()).get("max_seq_length") if st.is_file() else None
  return Pipeline(pooling, normalize, min(max_length or max_positions, max_positions))


def write_pipeline(out_dir: pathlib.Path, pipeline: Pipeline, hidden_size: int) -> None:
  """modules.json + 1_Pooling/config.json + sentence_bert_config.json, as sentence-transformers writes."""
  st = "sentence_transformers.models."
  modules = [{"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"}]
  if pipeline.normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"})
  (out_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
  (out_dir / "1_Pooling").mkdir(exist_ok=True)
  pool = {"word_embedding_dimension": hidden_size, **{k: pipeline.pooling == v for k, v in _ST_POOLING.items()},
          "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
  (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2) + "\n")
  (out_dir / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": pipeline.max_length, "do_lower_case": False}, indent=2) + "\n")


# ------------------------------------------------------------------------------- weights
def _dummy_inputs():
  ids = jnp.zeros((1, 4), jnp.int32)
  return ids, jnp.ones_like(ids), jnp.ones_like(ids)


def load_bert(model_dir, *, pooling: str | None = None, normalize: bool | None = None,
              with_pooler: bool | None = None, dtype: str = "float32", **config_overrides):
  """(BertTextEncoder, numpy params, ignored keys) from an HF directory. Raises naming any bad key.

  pooling / normalize: default to the directory's sentence-transformers pipeline (`read_pipeline`).
  with_pooler: keep HF's pooler (dense + tanh on [CLS]; unused by the pooled embedding, kept so an
    export is again a complete BertModel); default: when the checkpoint has one.
  """
  pipeline = read_pipeline(model_dir)
  pooling = pipeline.pooling if pooling is None else pooling
  if pooling not in BERT_POOLING_MODES:
    raise ValueError(f"unknown BERT pooling mode {pooling!r}; known: {', '.join(BERT_POOLING_MODES)}")
  tensors = hf_io.read_weights(model_dir)
  prefix = BERT_PREFIX if any(k.startswith(BERT_PREFIX) for k in tensors) else ""
  if with_pooler is None:
    with_pooler = prefix + "pooler.dense.weight" in tensors
  config = BertConfig.from_hf(hf_io.read_config(model_dir), add_pooling_layer=with_pooler, dtype=dtype,
                              **config_overrides)
  module = BertTextEncoder(config, pooling=pooling, normalize=pipeline.normalize if normalize is None else normalize)
  optional = [*HEAD_KEYS, *(re.escape(prefix) + k for k in BUFFER_KEYS)]
  if not with_pooler:
    optional.append(re.escape(prefix) + r"pooler\..*")
  params, ignored = keymap.to_flax(tensors, table(prefix), hf_io.abstract_shapes(module, *_dummy_inputs()),
                                   optional=optional)
  return module, params, ignored


def save_bert(out_dir, config: BertConfig, params, *, pipeline: Pipeline | None = None,
              tokenizer_dir=None) -> pathlib.Path:
  """Writes an HF BertModel directory (config.json + model.safetensors in the params' dtype), the
  sentence-transformers pipeline files when `pipeline` is given, and `tokenizer_dir`'s tokenizer."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tensors = keymap.to_hf(jax.device_get(params), table())
  safetensors_io.write(out_dir / "model.safetensors", tensors, {"format": "pt"})
  dtype = str(tensors["embeddings.word_embeddings.weight"].dtype)
  hf = dict(config.to_hf(), torch_dtype=dtype, dtype=dtype)
  (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  if pipeline is not None:
    write_pipeline(out_dir, pipeline, config.hidden_size)
  if tokenizer_dir is not None:
    for name in TOKENIZER_FILES:
      if (pathlib.Path(tokenizer_dir) / name).is_file():
        shutil.copyfile(pathlib.Path(tokenizer_dir) / name, out_dir / name)
  return out_dir


# ------------------------------------------------------------------------------- tokenization
@dataclasses.dataclass
class BertTokenizer:
  """`[CLS] text [SEP]` ids from the directory's tokenizer.json, right padded, as numpy.

  The same interface as `Llm2VecTokenizer` (`max_length`, `encode_rows`, `pad`, `__call__`), so
  `eval.embedder.TextEmbedder` drives either. Every real token is pooled, [CLS] and [SEP] included,
  which is sentence-transformers' mean over the attention mask.
  """
  tokenizer: DirTokenizer
  max_length: int = 512

  @classmethod
  def from_model_dir(cls, model_dir, max_length: int | None = None) -> "BertTokenizer":
    pipeline = read_pipeline(model_dir)
    return cls(DirTokenizer(model_dir), pipeline.max_length if max_length is None else max_length)

  def encode_rows(self, texts: Sequence[str], instructions: Sequence[str] | str = ""
                  ) -> list[tuple[list[int], int]]:
    """(ids, number of pooled tokens = all of them) per text. BERT sentence encoders take no
    instruction: a query is embedded as its text alone, as sentence-transformers embeds it."""
    del instructions
    ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
    return [(list(row), len(row)) for row in ids]

  def pad(self, rows: Sequence[tuple[list[int], int]], length: int) -> dict[str, np.ndarray]:
    if any(len(r) > length for r, _ in rows):
      raise ValueError(f"pad length {length} is shorter than a tokenized text; set max_length <= {length}")
    input_ids = np.full((len(rows), length), self.tokenizer.pad_token_id, np.int32)
    attention_mask = np.zeros((len(rows), length), np.int32)
    for b, (row, _) in enumerate(rows):
      input_ids[b, :len(row)] = row
      attention_mask[b, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "embed_mask": attention_mask.copy()}

  def __call__(self, texts: Sequence[str], instructions: Sequence[str] | str = "",
               pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenizes and pads a batch; `pad_to` fixes L (default: the longest in the batch)."""
    rows = self.encode_rows(texts, instructions)
    return self.pad(rows, pad_to if pad_to is not None else max(len(r) for r, _ in rows))


# ------------------------------------------------------------------------------- embedding
def load_embedder(model_dir, *, batch_size: int = 32, max_length: int | None = None, dtype: str = "float32",
                  mesh=None):
  """A `TextEmbedder` (sorted, length-bucketed, jitted batches over the mesh) for a BERT directory."""
  module, params, _ = load_bert(model_dir, dtype=dtype)
  tokenizer = BertTokenizer.from_model_dir(model_dir, max_length)
  if tokenizer.max_length > module.config.max_position_embeddings:
    raise ValueError(f"max_length {tokenizer.max_length} exceeds the model's "
                     f"{module.config.max_position_embeddings} positions")
  return TextEmbedder(module, params, tokenizer, mesh=mesh, batch_size=batch_size)


def embed_texts(model_dir, texts: Sequence[str], batch_size: int = 32, **kwargs) -> np.ndarray:
  """(N, D) float32 embeddings in input order, pooled (and normalized) as the directory's pipeline says."""
  return load_embedder(model_dir, batch_size=batch_size, **kwargs).embed(list(texts))
