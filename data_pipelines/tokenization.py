"""llm2vec 0.2.3's tokenization, exactly, as a numpy-producing object usable in Grain workers.

The conventions (from `llm2vec/llm2vec.py`): an instruction is joined to its text as
`instruction.strip() + " !@#$%^&*()" + text`; the whole string (separator removed) is tokenized with
pad = eos; the last `n` real tokens, where `n` is the length of the text part tokenized alone
without special tokens, form the `embed_mask` — the tokens that are pooled. The instruction (and
BOS) is attended to but never pooled. llm2vec only pads on the left; we also pad on the right and
place the embed mask on the same tokens, so pooling is padding-side independent.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

import numpy as np

from data_pipelines.dir_tokenizer import DirTokenizer

SEPARATOR = "!@#$%^&*()"

# Chat wrappers (prefix, suffix) around the joined text. llm2vec applies one only for these
# `_name_or_path`s ("auto" reproduces that rule); the released LLM2VEC4CXR always applies llama3.
WRAPPERS = {
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    "mistral": ("[INST] ", " [/INST]"),
    "gemma": ("<bos><start_of_turn>user\n", "<end_of_turn>"),
    "qwen2": ("<|im_start|>user\n", "<|im_end|>"),
}
WRAPPER_CHOICES = ("auto", "none", *WRAPPERS)
_AUTO_WRAPPER = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama3",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral",
    "meta-llama/Llama-2-7b-chat-hf": "mistral",
    "google/gemma-2-9b-it": "gemma",
    "Qwen/Qwen2-1.5B-Instruct": "qwen2",
    "Qwen/Qwen2-7B-Instruct": "qwen2",
}
# eos_token pooling appends a literal end marker to the text, per config class (llm2vec's rule).
_EOS_SUFFIX = {"llama": " </s>", "mistral": " </s>", "gemma": "<eos>", "qwen2": "<|endoftext|>"}
_LLAMA3_BASE = "meta-llama/Meta-Llama-3-8B"  # llm2vec's one name-keyed eos marker


def resolve_wrapper(wrapper: str, name_or_path: str) -> str:
  """The concrete wrapper `wrapper` means for a model called `name_or_path` ("auto": llm2vec's rule)."""
  if wrapper not in WRAPPER_CHOICES:
    raise ValueError(f"unknown wrapper {wrapper!r}; choose one of {', '.join(WRAPPER_CHOICES)}")
  return _AUTO_WRAPPER.get(name_or_path, "none") if wrapper == "auto" else wrapper


def load_hf_tokenizer(model_dir: str | pathlib.Path) -> DirTokenizer:
  """The directory's own tokenizer.json, configured as llm2vec configures it: pad = eos."""
  tok = DirTokenizer(model_dir)
  tok.set_pad_to_eos()
  return tok


@dataclasses.dataclass
class Llm2VecTokenizer:
  """Produces `input_ids`, `attention_mask`, `embed_mask` (int32, (B, L)) for llm2vec-style encoders.

  Attributes:
    tokenizer: the directory's tokenizer with pad = eos (see `load_hf_tokenizer`), or anything
      with the same calls (tests use a word-level stand-in).
    max_length: truncation length in tokens (llm2vec's `max_length`).
    doc_max_length: llm2vec's word-level trimming of long texts before tokenization (None: off).
    padding_side: "left" (llm2vec) or "right".
    wrapper: "none", "auto" (llm2vec's rule from `name_or_path`), or a key of `WRAPPERS`.
    name_or_path: the `_name_or_path` llm2vec would see, for wrapper="auto".
    model_type: HF config `model_type`, for the eos_token pooling suffix.
    pooling: pooling mode; "eos_token" appends the end marker as llm2vec does.
  """
  tokenizer: object
  max_length: int = 512
  doc_max_length: int | None = 400
  padding_side: str = "left"
  wrapper: str = "auto"
  name_or_path: str = ""
  model_type: str = "llama"
  pooling: str = "mean"

  @classmethod
  def from_model_dir(cls, model_dir, **kwargs) -> "Llm2VecTokenizer":
    model_dir = pathlib.Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    kwargs.setdefault("name_or_path", config.get("_name_or_path", ""))
    kwargs.setdefault("model_type", config.get("model_type", "llama"))
    return cls(load_hf_tokenizer(model_dir), **kwargs)

  def join(self, instruction: str, text: str) -> str:
    """llm2vec's `_convert_to_str`: trims overlong texts by words, then joins with the separator."""
    if self.doc_max_length is not None:
      n = self._count(text)
      while n > self.doc_max_length:
        text = " ".join(text.split()[:int(len(text.split()) * self.doc_max_length / n)])
        n = self._count(text)
    return f"{instruction.strip()} {SEPARATOR}{text}" if instruction else f"{SEPARATOR}{text}"

  def prepare(self, joined: str) -> str:
    """llm2vec's `prepare_for_tokenization`: chat wrapper and eos suffix on the joined string."""
    wrapper = resolve_wrapper(self.wrapper, self.name_or_path)
    if wrapper != "none":
      prefix, suffix = WRAPPERS[wrapper]
      joined = prefix + joined.strip() + suffix
      if wrapper == "llama3":  # llm2vec returns here: the Llama-3 template takes no eos suffix
        return joined
    if self.pooling == "eos_token":
      if self.name_or_path == _LLAMA3_BASE:
        joined = joined.strip() + "<|end_of_text|>"
      elif self.model_type in _EOS_SUFFIX:
        joined = joined.strip() + _EOS_SUFFIX[self.model_type]
    return joined

  def _count(self, text: str) -> int:
    return len(self.tokenizer(text, truncation=True, max_length=self.max_length,
                              add_special_tokens=False)["input_ids"])

  def encode_rows(self, texts: Sequence[str], instructions: Sequence[str] | str = ""
                  ) -> list[tuple[list[int], int]]:
    """Unpadded rows: (token ids, number of trailing tokens that are pooled) per text."""
    if isinstance(instructions, str):
      instructions = [instructions] * len(texts)
    strings = [self.prepare(self.join(i, t)) for i, t in zip(instructions, texts)]
    parts = [s.split(SEPARATOR) for s in strings]
    whole = ["".join(p) for p in parts]
    pooled = [p[1] if len(p) > 1 else "" for p in parts]
    ids = self.tokenizer(whole, truncation=True, max_length=self.max_length)["input_ids"]
    n_pooled = [len(x) for x in self.tokenizer(pooled, truncation=True, max_length=self.max_length,
                                               add_special_tokens=False)["input_ids"]]
    return [(list(row), min(n, len(row))) for row, n in zip(ids, n_pooled)]

  def pad(self, rows: Sequence[tuple[list[int], int]], length: int) -> dict[str, np.ndarray]:
    """Pads rows to (len(rows), length) arrays on `padding_side`."""
    if any(len(r) > length for r, _ in rows):
      raise ValueError(f"pad length {length} is shorter than a tokenized text; set max_length <= {length}")
    input_ids = np.full((len(rows), length), self.tokenizer.pad_token_id, np.int32)
    attention_mask = np.zeros((len(rows), length), np.int32)
    embed_mask = np.zeros((len(rows), length), np.int32)
    for b, (row, n) in enumerate(rows):
      start = length - len(row) if self.padding_side == "left" else 0
      end = start + len(row)
      input_ids[b, start:end] = row
      attention_mask[b, start:end] = 1
      # The pooled tokens are the last n real tokens (llm2vec marks the last n positions).
      embed_mask[b, end - n:end] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "embed_mask": embed_mask}

  def __call__(self, texts: Sequence[str], instructions: Sequence[str] | str = "",
               pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenizes and pads a batch; `pad_to` fixes L (default: the longest in the batch)."""
    rows = self.encode_rows(texts, instructions)
    return self.pad(rows, pad_to if pad_to is not None else max(len(r) for r, _ in rows))
