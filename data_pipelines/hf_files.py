"""Keep HF directories readable by both transformers 4.4x and 5.x.

transformers 5 writes `rope_parameters`, `dtype`, `tokenizer_class: TokenizersBackend` and BPE merges
as pairs; transformers 4.44 (which llm2vec 0.2.3 pins) reads `rope_theta`/`rope_scaling`, needs a class
it knows, and its tokenizers (<0.20) reads merges only as "a b" strings. An old reader missing
`rope_theta` silently falls back to 10000, so these rewrites are about correctness, not cosmetics.
"""
import json
import pathlib


def add_legacy_config_keys(config_path: pathlib.Path) -> None:
  cfg = json.loads(config_path.read_text())
  rope = cfg.get("rope_parameters") or {}
  if "rope_theta" in rope and "rope_theta" not in cfg:
    cfg["rope_theta"] = rope["rope_theta"]
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    cfg["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
  if "dtype" in cfg and "torch_dtype" not in cfg:
    cfg["torch_dtype"] = cfg["dtype"]
  config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def make_tokenizer_portable(model_dir: pathlib.Path) -> None:
  model_dir = pathlib.Path(model_dir)
  cfg_path = model_dir / "tokenizer_config.json"
  if cfg_path.is_file():
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
      cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    # The generic fast class would otherwise also emit token_type_ids, which decoder models reject.
    cfg.setdefault("model_input_names", ["input_ids", "attention_mask"])
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
  tok_path = model_dir / "tokenizer.json"
  if tok_path.is_file():
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    merges = tok.get("model", {}).get("merges")
    # Byte-level BPE symbols never contain a literal space, so "a b" is unambiguous there.
    if merges and isinstance(merges[0], list) and not any(" " in a or " " in b for a, b in merges):
      tok["model"]["merges"] = [f"{a} {b}" for a, b in merges]
      tok_path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
