"""Tiny random HF models saved as plain directories: the references for parity tests."""
import pathlib

import numpy as np
import torch
import transformers

from data_pipelines import hf_files

VOCAB = 256


def tiny_config(kind: str, **kw):
  base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
  base.update(kw)
  if kind == "llama":
    return transformers.LlamaConfig(**base)
  if kind == "qwen2":
    return transformers.Qwen2Config(**base)
  if kind == "mistral":
    return transformers.MistralConfig(sliding_window=None, **base)
  raise ValueError(kind)


CASES = {
    "llama_mha": ("llama", dict(num_key_value_heads=4)),
    "llama_gqa": ("llama", dict(num_key_value_heads=2)),
    "llama_mqa": ("llama", dict(num_key_value_heads=1)),
    "llama3_rope_tied": ("llama", dict(tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama_bias_untied": ("llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict()),
    "mistral": ("mistral", dict()),
}


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
  """Random values everywhere (HF inits norms to 1 and biases to 0, which would hide bugs)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.08 * torch.randn(p.shape, generator=g))


def make_model(case: str, causal_lm: bool = False, seed: int = 0):
  kind, kw = CASES[case]
  config = tiny_config(kind, **kw)
  cls = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
  model = cls.from_config(config)
  randomize_(model, seed)
  return model.eval()


def save(model, out: pathlib.Path, tokenizer=None) -> pathlib.Path:
  model.save_pretrained(out, safe_serialization=True)
  if tokenizer is not None:
    tokenizer.save_pretrained(out)
    hf_files.make_tokenizer_portable(out)
  hf_files.add_legacy_config_keys(out / "config.json")
  return out


def random_batch(batch: int, length: int, seed: int = 0, padding_side: str = "left", min_len: int = 3):
  """ids (B, L) and attention_mask (B, L) int64 with ragged lengths, as numpy."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, (batch, length))
  lengths = rng.integers(min_len, length + 1, batch)
  lengths[0] = length
  mask = np.zeros((batch, length), np.int64)
  for b, n in enumerate(lengths):
    if padding_side == "left":
      mask[b, length - n:] = 1
    else:
      mask[b, :n] = 1
  return ids, mask


def torch_hidden(model, ids, mask, bidirectional: bool) -> np.ndarray:
  ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
  with torch.no_grad():
    if bidirectional:  # padding-only, non-causal mask: what LLM2Vec's bidirectional models compute
      mask4 = mask_t[:, None, None, :].bool().expand(-1, 1, ids.shape[1], -1)
      out = model(input_ids=ids_t, attention_mask=mask4)
    else:
      out = model(input_ids=ids_t, attention_mask=mask_t)
  return out.last_hidden_state.float().numpy()


# Real tokenizers (llama.cpp's vocab-only GGUFs, SmolLM2's) for tiny models of each family.
TOKENIZER_OF = {"llama": "llama-bpe", "qwen2": "qwen2", "mistral": "smollm2"}
_LLAMA3_BOS = {  # Meta's Llama-3 tokenizer.json prepends <|begin_of_text|>; the vocab GGUF lacks it.
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}},
}


def real_tokenizer(kind: str, asset):
  name = TOKENIZER_OF[kind]
  if name == "smollm2":
    return transformers.AutoTokenizer.from_pretrained(asset("smollm2"))
  return transformers.AutoTokenizer.from_pretrained(asset("vocab"), gguf_file=f"ggml-vocab-{name}.gguf")


def model_dir_with_tokenizer(kind: str, out: pathlib.Path, asset, seed: int = 0) -> pathlib.Path:
  """A tiny random model of `kind` with that family's real tokenizer, saved by transformers."""
  import json
  tok = real_tokenizer(kind, asset)
  config = tiny_config(kind, vocab_size=len(tok), num_key_value_heads=2,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
  model = transformers.AutoModel.from_config(config)
  randomize_(model, seed)
  save(model.eval(), out, tok)
  if kind == "llama":
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    tj["post_processor"] = _LLAMA3_BOS
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
  return out


# Sentences a custom tokenizer is trained on: digits, units and percentages on purpose.
_TOKENIZER_CORPUS = [
    "Stable 8 mm nodule in the right upper lobe.", "ETT 4 cm above the carina.",
    "Heart size is normal. The lungs are clear.", "Small left pleural effusion, 15% of the hemithorax.",
    "No pneumothorax. No focal consolidation.", "Interval increase in bibasilar opacities since 2019.",
    "Right PICC tip at the cavoatrial junction, 2.5 cm below the carina.",
]


def custom_tokenizer(vocab_size: int = 400):
  """A ByteLevel BPE trained with `tokenizers` on a few sentences: GPT-2's pre-tokenizer regex
  (digits grouped, never split one by one, unlike Qwen2's), `<s>`/`</s>`, and a BOS template."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_TOKENIZER_CORPUS * 4, trainer)
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", tok.token_to_id("<s>"))])
  return tok


def model_dir_with_custom_tokenizer(kind: str, out: pathlib.Path, seed: int = 0,
                                    vocab_size: int | None = None) -> pathlib.Path:
  """A tiny random `kind` model whose tokenizer.json is our own (not the family's), with a
  tokenizer_config.json naming the generic fast class, as a user's trained tokenizer would be.
  vocab_size: the model's embedding rows (default: the tokenizer's size)."""
  import json
  tok = custom_tokenizer()
  config = tiny_config(kind, vocab_size=vocab_size or tok.get_vocab_size(), num_key_value_heads=2,
                       bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
  model = transformers.AutoModel.from_config(config)
  randomize_(model, seed)
  save(model.eval(), out)
  tok.save(str(out / "tokenizer.json"))
  hf_files.make_tokenizer_portable(out)  # tokenizers >= 0.20 writes merges as pairs; 0.19 reads strings
  (out / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
      "model_max_length": 512, "model_input_names": ["input_ids", "attention_mask"]}))
  return out
