"""A model directory's own tokenizer: `tokenizer.json` exactly as written, plus its special tokens.

Why not `transformers.AutoTokenizer`: transformers 5 instantiates a family class from config.json's
`model_type` (e.g. `Qwen2Tokenizer`) even when tokenizer_config.json names the generic fast class,
and that class rebuilds the pre-tokenizer. A directory whose tokenizer.json splits no digits then
tokenizes "8 mm" differently from the file (and from llm2vec 0.2.3 on transformers 4.44), so every
report with a number embeds differently. Here the ids are by construction those of
`tokenizers.Tokenizer.from_file(dir / "tokenizer.json")`, with the file's own post-processor
(BOS/EOS template). The special-token *names* come from tokenizer_config.json /
special_tokens_map.json, as HF reads them.

The object offers the few calls of an HF fast tokenizer that this project makes (`__call__` with
truncation, `decode`, `convert_tokens_to_ids`, `*_token(_id)`, `all_special_ids`, `len`), is
picklable (Grain workers) and imports no transformers.
"""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import tokenizers

SPECIAL_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


class TokenizerError(ValueError):
  pass


def _content(value) -> str | None:
  """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:
    raise TokenizerError(f"{path} is not valid JSON ({e})") from None


class DirTokenizer:
  """`tokenizers.Tokenizer` of `model_dir/tokenizer.json` with the directory's special tokens."""

  def __init__(self, model_dir: str | pathlib.Path):
    model_dir = pathlib.Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
      raise TokenizerError(f"{model_dir} has no tokenizer.json (a fast tokenizer file is required)")
    try:
      self._tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses from Rust
      raise TokenizerError(f"{path} could not be read by tokenizers: {e}") from None
    # Truncation and padding are per call (like HF), never the file's stored defaults.
    self._tok.no_padding()
    self._tok.no_truncation()
    self.name_or_path = str(model_dir)
    # HF reads special tokens from tokenizer_config.json, then special_tokens_map.json.
    config = _read_json(model_dir / "tokenizer_config.json")
    special_map = _read_json(model_dir / "special_tokens_map.json")
    self._special: dict[str, str | None] = {}
    for role in SPECIAL_ROLES:
      token = _content(config.get(f"{role}_token")) or _content(special_map.get(f"{role}_token"))
      if token is not None and self._tok.token_to_id(token) is None:
        raise TokenizerError(f"{role}_token {token!r} of {model_dir} is not in its tokenizer.json vocabulary")
      self._special[role] = token
    if self._special["eos"] is None:  # fall back to the model config's id, as generation does
      eos_id = _read_json(model_dir / "config.json").get("eos_token_id")
      eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
      self._special["eos"] = self._tok.id_to_token(eos_id) if isinstance(eos_id, int) else None
    extra = config.get("additional_special_tokens") or special_map.get("additional_special_tokens") or []
    self.additional_special_tokens = [t for t in (_content(x) for x in extra) if t]

  # --- special tokens, HF-style attributes
  def _id(self, role: str) -> int | None:
    token = self._special.get(role)
    return None if token is None else self._tok.token_to_id(token)

  def __getattr__(self, name: str):
    # bos_token, eos_token_id, ... for every role; anything else is a real AttributeError.
    role, _, suffix = name.partition("_token")
    if role in SPECIAL_ROLES and suffix in ("", "_id") and "_special" in self.__dict__:
      return self._special[role] if suffix == "" else self._id(role)
    raise AttributeError(name)

  def set_pad_to_eos(self) -> None:
    """llm2vec's convention (pad = eos); an error when the directory names no end token."""
    if self._special["eos"] is None:
      raise TokenizerError(f"{self.name_or_path} names no eos_token (tokenizer_config.json or config.json)")
    self._special["pad"] = self._special["eos"]

  @property
  def all_special_ids(self) -> list[int]:
    """Every token id that is never content: the named roles, the additional specials and every
    added token the file marks special (what its template inserts)."""
    ids = {self._id(r) for r in SPECIAL_ROLES}
    ids |= {self._tok.token_to_id(t) for t in self.additional_special_tokens}
    ids |= {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    return sorted(i for i in ids if i is not None)

  def __len__(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  # --- encoding
  def __call__(self, texts: str | Sequence[str], truncation: bool = False, max_length: int | None = None,
               add_special_tokens: bool = True) -> dict[str, list]:
    """{"input_ids": ...} for one text or a batch, truncated as HF truncates: the text to
    max_length minus the template's tokens, then the template. Stateless, so threads may share it."""
    single = isinstance(texts, str)
    encodings = self._tok.encode_batch([texts] if single else list(texts), add_special_tokens=False)
    limit = max_length if truncation and max_length is not None else None
    n_special = self._n_special() if add_special_tokens else 0
    if limit is not None and limit < n_special:
      raise TokenizerError(f"max_length {limit} leaves no room for the {n_special} template tokens")
    ids = []
    for e in encodings:
      if limit is not None:
        e.truncate(limit - n_special)
      if add_special_tokens:
        e = self._tok.post_process(e, None, True)
      ids.append(e.ids)
    return {"input_ids": ids[0] if single else ids}

  def _n_special(self) -> int:
    processor = self._tok.post_processor
    return 0 if processor is None else processor.num_special_tokens_to_add(False)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    return self(text, add_special_tokens=add_special_tokens)["input_ids"]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def convert_tokens_to_ids(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def __getstate__(self):
    return {**self.__dict__, "_tok": self._tok.to_str()}

  def __setstate__(self, state):
    state = dict(state)
    tok = tokenizers.Tokenizer.from_str(state.pop("_tok"))
    tok.no_padding()
    tok.no_truncation()
    self.__dict__.update(state, _tok=tok)
