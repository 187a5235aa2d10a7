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

--pooling, --bidirectional and --max_length, when not given, are the directory's own
DIR/llm2vec_config.json (pooling_mode, max_length, doc_max_length, and "bidirectional" when it has
one), as `LLM2Vec.from_pretrained(DIR)` reads it; without that file, llm2vec's defaults (mean,
bidirectional, 512). A flag given explicitly overrides the file.
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


# LLM2Vec's constructor defaults and from_pretrained's enable_bidirectional=True.
LLM2VEC_DEFAULTS = {"pooling": "mean", "max_length": 512, "doc_max_length": 400, "bidirectional": True}
LLM2VEC_CONFIG = "llm2vec_config.json"  # = export.hf.LLM2VEC_CONFIG (not imported: it loads flax)
_CONFIG_KEYS = {"pooling_mode": "pooling", "max_length": "max_length", "doc_max_length": "doc_max_length",
                "bidirectional": "bidirectional"}


def read_llm2vec_config(model_dir) -> dict:
  """The settings DIR/llm2vec_config.json declares, under embed_file's names ({} without the file);
  a malformed file or value is an InputError naming it. Keys llm2vec has but we do not use
  (skip_instruction, latent_heads) are left to their readers."""
  path = pathlib.Path(model_dir) / LLM2VEC_CONFIG
  if not path.is_file():
    return {}
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise InputError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(raw, dict):
    raise InputError(f"{path} must hold a JSON object")
  out = {ours: raw[theirs] for theirs, ours in _CONFIG_KEYS.items() if raw.get(theirs) is not None}
  if "pooling" in out and out["pooling"] not in POOLING_MODES:
    raise InputError(f"{path}: pooling_mode {out['pooling']!r} is not one of {', '.join(POOLING_MODES)}")
  for key in ("max_length", "doc_max_length"):
    if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1):
      raise InputError(f"{path}: {key} must be a positive integer, got {out[key]!r}")
  if "bidirectional" in out and not isinstance(out["bidirectional"], bool):
    raise InputError(f"{path}: bidirectional must be true or false, got {out['bidirectional']!r}")
  return out


def resolve_settings(model_dir, defaults=LLM2VEC_DEFAULTS, **given) -> dict:
  """pooling / max_length / doc_max_length / bidirectional: what is `given` (None: not given),
  else the directory's llm2vec_config.json, else `defaults`."""
  settings = {**defaults, **read_llm2vec_config(model_dir)}
  settings.update({k: v for k, v in given.items() if v is not None})
  return settings


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


def embed_file(model_dir: str, input_path: str, output_path: str, *, pooling: str | None = None,
               bidirectional: bool | None = None, instruction: str = "", max_length: int | None = None,
               batch_size: int = 32, dtype: str = "float32", wrapper: str = "auto") -> np.ndarray:
  """Embeds input_path's texts into output_path. pooling / bidirectional / max_length: None takes
  the directory's llm2vec_config.json, else llm2vec's defaults (`resolve_settings`)."""
  # Deferred so that bad input is reported before jax/transformers take seconds to import.
  texts = read_texts(input_path)
  if (max_length is not None and max_length < 1) or batch_size < 1:
    raise InputError("--max_length and --batch_size must be positive")
  from cxrclip_jax.eval.embedder import TextEmbedder
  from cxrclip_jax.export import hf
  from data_pipelines.tokenization import Llm2VecTokenizer

  hf.read_config(model_dir)  # a missing directory, config or weights fails here, first
  hf.weight_files(model_dir)
  settings = resolve_settings(model_dir, pooling=pooling, bidirectional=bidirectional, max_length=max_length)
  pooling, bidirectional, max_length = settings["pooling"], settings["bidirectional"], settings["max_length"]
  try:
    tokenizer = Llm2VecTokenizer.from_model_dir(model_dir, max_length=max_length, pooling=pooling, wrapper=wrapper,
                                                doc_max_length=settings["doc_max_length"])
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
      pooling=flags.DEFINE_enum("pooling", "mean", list(POOLING_MODES),
                                "Pooling mode (default: DIR/llm2vec_config.json's, else mean)."),
      bidirectional=flags.DEFINE_bool("bidirectional", True, "LLM2Vec bidirectional attention (false: causal; "
                                      "default: DIR/llm2vec_config.json's, else true)."),
      instruction=flags.DEFINE_string("instruction", "", "Instruction prepended to every text (attended, not pooled)."),
      max_length=flags.DEFINE_integer("max_length", 512, "Truncation length in tokens (default: "
                                      "DIR/llm2vec_config.json's, else 512)."),
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
    # A flag left out defers to the directory's llm2vec_config.json (None), however it defaults.
    given = {k: getattr(f, k).value if getattr(f, k).present else None
             for k in ("pooling", "bidirectional", "max_length")}
    emb = embed_file(f.model_dir.value, f.input.value, f.output.value, instruction=f.instruction.value,
                     batch_size=f.batch_size.value, dtype=f.dtype.value, wrapper=f.wrapper.value, **given)
  except (InputError, FileNotFoundError, KeyMismatchError, SafetensorsError, ValueError, OSError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message
    return 1
  s = resolve_settings(f.model_dir.value, **given)  # read again only to say what was used
  print(f"wrote {f.output.value}: {emb.shape[0]} x {emb.shape[1]} float32 (pooling {s['pooling']}, "
        f"{'bidirectional' if s['bidirectional'] else 'causal'}, max_length {s['max_length']})")
  return 0


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: sys.exit(main(argv, _FLAGS)))
