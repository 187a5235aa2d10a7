"""Embed texts with an HF decoder LLM as an LLM2Vec encoder.

  python -m cxrclip_jax.embed --model_dir=DIR --input=texts.jsonl --output=emb.npy \
      [--pooling=mean|weighted_mean|eos_token|last_token|bos_token|latent_attention] \
      [--bidirectional=true|false] [--instruction=TEXT] [--max_length=512] [--batch_size=32] \
      [--wrapper=auto|none|llama3|mistral|qwen2|gemma] [--dtype=float32|bfloat16]

DIR is a plain HF Llama/Qwen2/Mistral directory (safetensors). texts.jsonl holds one JSON object
per line with a "text" field. emb.npy is float32 (N, hidden), in input order, pooled, not
normalized; tokenization and pooling follow llm2vec 0.2.3 (pad = eos, instruction joined by its
separator, only the text's tokens pooled); token ids are those of DIR/tokenizer.json itself.
--wrapper puts a chat template around each text: "auto" is llm2vec's rule (by config.json's
_name_or_path), "llama3" the template the released LLM2VEC4CXR always uses.
"""
from __future__ import annotations

import json
import pathlib
import sys
import types

from absl import app, flags
import numpy as np

from cxrclip_jax.models.pooling import POOLING_MODES
from data_pipelines.tokenization import WRAPPER_CHOICES

class InputError(ValueError):
  pass


def read_texts(path: str) -> list[str]:
  """Texts of a JSONL file; any malformed line or empty text is an error naming the line."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise InputError(f"input file {path!r} does not exist")
  texts = []
  try:
    lines = p.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise InputError(f"{path} is not UTF-8 ({e.reason} at byte {e.start})") from None
  for n, line in enumerate(lines, 1):
    try:
      obj = json.loads(line)
    except ValueError as e:
      raise InputError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or "text" not in obj:
      raise InputError(f"{path} line {n}: expected a JSON object with a \"text\" field")
    if not isinstance(obj["text"], str):
      raise InputError(f"{path} line {n}: \"text\" must be a string, got {type(obj['text']).__name__}")
    if not obj["text"].strip():
      raise InputError(f"{path} line {n}: empty text")
    texts.append(obj["text"])
  if not texts:
    raise InputError(f"{path} holds no texts")
  return texts


def embed_file(model_dir: str, input_path: str, output_path: str, *, pooling: str = "mean",
               bidirectional: bool = True, instruction: str = "", max_length: int = 512,
               batch_size: int = 32, dtype: str = "float32", wrapper: str = "auto") -> np.ndarray:
  # Deferred so that bad input is reported before jax/transformers take seconds to import.
  texts = read_texts(input_path)
  if max_length < 1 or batch_size < 1:
    raise InputError("--max_length and --batch_size must be positive")
  from cxrclip_jax.eval.embedder import TextEmbedder
  from cxrclip_jax.export import hf
  from data_pipelines.tokenization import Llm2VecTokenizer

  hf.read_config(model_dir)  # a missing directory, config or weights fails here, first
  hf.weight_files(model_dir)
  try:
    tokenizer = Llm2VecTokenizer.from_model_dir(model_dir, max_length=max_length, pooling=pooling, wrapper=wrapper)
  except (OSError, ValueError) as e:
    raise InputError(f"could not load the tokenizer of {model_dir}: {e}") from None
  bos = tokenizer.tokenizer.bos_token_id
  if pooling == "bos_token":
    rows = tokenizer.encode_rows(texts[:1], instruction)
    if bos is None or bos not in rows[0][0]:
      raise InputError(f"bos_token pooling: the tokenizer of {model_dir} adds no BOS token")
  module, params, ignored = hf.load_text_encoder(model_dir, pooling=pooling, is_causal=not bidirectional,
                                                 dtype=dtype, bos_token_id=bos)
  if ignored:
    print(f"note: ignoring {len(ignored)} checkpoint tensors this pooling does not use "
          f"({', '.join(ignored[:3])}{', …' if len(ignored) > 3 else ''})", file=sys.stderr)
  emb = TextEmbedder(module, params, tokenizer, batch_size=batch_size).embed(
      texts, instruction, progress=sys.stderr.isatty())
  out = pathlib.Path(output_path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, "wb") as f:  # np.save(path) would append ".npy" to other names
    np.save(f, emb.astype(np.float32))
  return emb


def _define_flags():
  """Defined only when run as a program: tests and other modules import this one too."""
  return types.SimpleNamespace(
      model_dir=flags.DEFINE_string("model_dir", None, "HF model directory (safetensors)."),
      input=flags.DEFINE_string("input", None, "JSONL file, one {\"text\": ...} object per line."),
      output=flags.DEFINE_string("output", None, "Output .npy path: float32 (N, hidden)."),
      pooling=flags.DEFINE_enum("pooling", "mean", list(POOLING_MODES), "Pooling mode."),
      bidirectional=flags.DEFINE_bool("bidirectional", True, "LLM2Vec bidirectional attention (false: causal)."),
      instruction=flags.DEFINE_string("instruction", "", "Instruction prepended to every text (attended, not pooled)."),
      max_length=flags.DEFINE_integer("max_length", 512, "Truncation length in tokens."),
      batch_size=flags.DEFINE_integer("batch_size", 32, "Texts per forward pass."),
      dtype=flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype."),
      wrapper=flags.DEFINE_enum("wrapper", "auto", list(WRAPPER_CHOICES),
                                "Chat template around each text (auto: llm2vec's rule by model name)."))


def main(argv, f):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  for flag in (f.model_dir, f.input, f.output):
    if not flag.value:
      print(f"error: --{flag.name} is required", file=sys.stderr)
      return 2
  from cxrclip_jax import host_memory
  from cxrclip_jax.export.keymap import KeyMismatchError
  from cxrclip_jax.export.safetensors_io import SafetensorsError
  host_memory.keep_freed_memory()
  try:
    emb = embed_file(f.model_dir.value, f.input.value, f.output.value, pooling=f.pooling.value,
                     bidirectional=f.bidirectional.value, instruction=f.instruction.value,
                     max_length=f.max_length.value, batch_size=f.batch_size.value, dtype=f.dtype.value,
                     wrapper=f.wrapper.value)
  except (InputError, FileNotFoundError, KeyMismatchError, SafetensorsError, ValueError, OSError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message
    return 1
  print(f"wrote {f.output.value}: {emb.shape[0]} x {emb.shape[1]} float32")
  return 0


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: sys.exit(main(argv, _FLAGS)))
