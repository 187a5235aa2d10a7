"""Flax BERT vs PyTorch transformers (levanter-style), strict keys, export, and the real all-MiniLM-L6-v2."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch
import transformers

import hf_tiny
from cxrclip_jax.export import bert_hf, keymap, safetensors_io

REPORTS = [
    "There is a small right pleural effusion.",
    "No acute cardiopulmonary abnormality. Heart size is normal.",
    "Patchy opacity in the left lower lobe, concerning for pneumonia; follow-up radiograph recommended.",
    "Interval placement of a right internal jugular central venous catheter with tip in the SVC. No pneumothorax.",
    "Mild cardiomegaly and bibasilar atelectasis, unchanged from the prior study of 03/12.",
    "Lungs are clear.",
]


def tiny_bert(cls=transformers.BertModel, seed: int = 0, **kw):
  base = dict(vocab_size=hf_tiny.VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=96, max_position_embeddings=64, type_vocab_size=2)
  model = cls(transformers.BertConfig(**{**base, **kw}))
  hf_tiny.randomize_(model, seed)
  # randomize_ spots norms by "norm"; BERT calls them "LayerNorm": scales near 1, not near 0.
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("LayerNorm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
  return model.eval()


def torch_mean_pool(hidden: torch.Tensor, mask: np.ndarray) -> np.ndarray:
  """sentence-transformers' Pooling(mean): sum over the attention mask / token count."""
  m = torch.from_numpy(mask).unsqueeze(-1).float()
  return ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()


def _apply(module, params, ids, mask, **kw):
  return np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(mask), **kw))


def _hidden(module, params, ids, mask, types=None, deterministic=True, rngs=None):
  """(last hidden state, pooler output or None) of the BertModel inside a BertTextEncoder."""
  hidden, pooled = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                                None if types is None else jnp.asarray(types), rngs=rngs,
                                method=lambda m, i, a, t: m.model(i, a, t, deterministic))
  return np.asarray(hidden), None if pooled is None else np.asarray(pooled)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_hidden_pooler_and_mean_pool_match_transformers(tmp_path, act):
  model = tiny_bert(hidden_act=act)
  src = hf_tiny.save(model, tmp_path / "src")
  module, params, ignored = bert_hf.load_bert(src)
  assert ignored == [] and module.config.hidden_act == act and module.config.add_pooling_layer
  ids, mask = hf_tiny.random_batch(4, 16, seed=1, padding_side="right")
  types = np.random.default_rng(2).integers(0, 2, ids.shape) * mask
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types))
  hidden, pooled = _hidden(module, params, ids, mask, types)
  real = mask.astype(bool)
  err = np.abs(hidden - ref.last_hidden_state.numpy())[real].max()
  assert err < 1e-4, f"last hidden state: max abs diff {err:.2e}"
  assert np.abs(pooled - ref.pooler_output.numpy()).max() < 1e-4
  with torch.no_grad():
    ref_ids_only = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
  ours = _apply(module, params, ids, mask)  # BertTextEncoder: token types 0, mean over the mask
  assert ours.dtype == np.float32 and ours.shape == (4, 64)
  err = np.abs(ours - torch_mean_pool(ref_ids_only, mask)).max()
  assert err < 1e-4, f"mean pooled: max abs diff {err:.2e}"
  cls = module.clone(pooling="cls", normalize=True)
  ref_cls = torch.nn.functional.normalize(ref_ids_only[:, 0], dim=-1).numpy()
  assert np.abs(_apply(cls, params, ids, mask) - ref_cls).max() < 1e-5


def test_export_reloads_in_transformers_identically(tmp_path):
  model = tiny_bert(seed=3)
  src = hf_tiny.save(model, tmp_path / "src")
  module, params, _ = bert_hf.load_bert(src)
  out = bert_hf.save_bert(tmp_path / "out", module.config, params, pipeline=bert_hf.Pipeline("mean", True, 48))
  reloaded, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  ref_sd, new_sd = model.state_dict(), reloaded.state_dict()
  assert ref_sd.keys() == new_sd.keys()
  assert all(torch.equal(ref_sd[k], new_sd[k]) for k in ref_sd)
  assert bert_hf.read_pipeline(out) == bert_hf.Pipeline("mean", True, 48)
  again, again_params, _ = bert_hf.load_bert(out)
  assert again.normalize and again.config == module.config
  for path, v in keymap.flatten(params).items():
    np.testing.assert_array_equal(keymap.flatten(again_params)[path], v)


def test_masked_lm_checkpoint_loads_its_bert_and_reports_heads(tmp_path):
  model = tiny_bert(transformers.BertForMaskedLM, seed=4)
  src = hf_tiny.save(model, tmp_path / "mlm")
  assert any(k.startswith("bert.") for k in safetensors_io.read(src / "model.safetensors"))
  module, params, ignored = bert_hf.load_bert(src)
  assert not module.config.add_pooling_layer  # BertForMaskedLM has no pooler
  assert ignored and all(k.startswith("cls.") for k in ignored), ignored
  ids, mask = hf_tiny.random_batch(3, 12, seed=5, padding_side="right")
  with torch.no_grad():
    ref = model.bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  hidden, pooled = _hidden(module, params, ids, mask)
  assert pooled is None and np.abs(hidden - ref)[mask.astype(bool)].max() < 1e-4


def test_strict_keys_name_the_offender(tmp_path):
  src = hf_tiny.save(tiny_bert(), tmp_path / "src")
  tensors = safetensors_io.read(src / "model.safetensors")

  def rewrite(mutate):
    d = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    (d / "config.json").write_text((src / "config.json").read_text())
    t = {k: np.array(v) for k, v in tensors.items()}
    mutate(t)
    safetensors_io.write(d / "model.safetensors", t)
    return d

  key = "encoder.layer.1.attention.self.key.weight"
  with pytest.raises(keymap.KeyMismatchError, match=rf"missing HF key '{key}'"):
    bert_hf.load_bert(rewrite(lambda t: t.pop(key)))
  with pytest.raises(keymap.KeyMismatchError, match=r"unused HF keys: 'encoder\.layer\.0\.extra\.weight'"):
    bert_hf.load_bert(rewrite(lambda t: t.update({"encoder.layer.0.extra.weight": np.zeros(3, np.float32)})))
  with pytest.raises(keymap.KeyMismatchError, match=r"'embeddings\.LayerNorm\.bias' has shape \(5,\)"):
    bert_hf.load_bert(rewrite(lambda t: t.update({"embeddings.LayerNorm.bias": np.zeros(5, np.float32)})))
  # A head key is only ignorable next to a base model that is complete.
  with pytest.raises(keymap.KeyMismatchError, match=r"missing HF key 'pooler\.dense\.bias'"):
    bert_hf.load_bert(rewrite(lambda t: t.pop("pooler.dense.bias")), with_pooler=True)


def test_dropout_remat_and_length_guard(tmp_path):
  src = hf_tiny.save(tiny_bert(seed=6), tmp_path / "src")
  ids, mask = hf_tiny.random_batch(3, 12, seed=7, padding_side="right")
  real = mask.astype(bool)
  module, params, _ = bert_hf.load_bert(src, hidden_dropout_prob=0.0, attention_probs_dropout_prob=1e-7)
  base, _ = _hidden(module, params, ids, mask)
  # Training mode with a negligible rate runs the materialized-probabilities path: same numbers.
  train, _ = _hidden(module, params, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert np.abs(train - base)[real].max() < 1e-5
  dropped, _ = bert_hf.load_bert(src, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.3)[:2]
  runs = [_hidden(dropped, params, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(s)})[0]
          for s in (1, 2)]
  assert np.isfinite(runs[0]).all() and np.abs(runs[0] - runs[1])[real].max() > 1e-3
  remat, _, _ = bert_hf.load_bert(src, remat=True)
  np.testing.assert_allclose(_hidden(remat, params, ids, mask)[0], base, atol=1e-6)
  long_ids = np.zeros((1, 65), np.int64)
  with pytest.raises(ValueError, match="exceeds max_position_embeddings 64"):
    _apply(module, params, long_ids, np.ones_like(long_ids))


def _wordpiece_dir(out) -> None:
  """A tiny real BERT WordPiece tokenizer.json (what BertTokenizerFast writes) next to the weights."""
  words = sorted({w.strip(".,;:/()").lower() for t in REPORTS for w in t.split()} - {""})
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:/()")
  vocab = specials + chars + [f"##{c}" for c in chars] + words[:hf_tiny.VOCAB - 5 - 2 * len(chars)]
  tok = tokenizers.Tokenizer(tokenizers.models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.add_special_tokens(specials)
  tok.save(str(out / "tokenizer.json"))
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "pad_token": "[PAD]", "unk_token": "[UNK]",
       "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}))


def test_embed_texts_matches_sentence_transformers_pipeline_on_tiny(tmp_path):
  model = tiny_bert(seed=8)
  src = hf_tiny.save(model, tmp_path / "src")
  _wordpiece_dir(src)
  bert_hf.write_pipeline(src, bert_hf.Pipeline("mean", True, 24), 64)
  texts = REPORTS * 7  # 42 texts: several batches, the last one padded with empty rows
  ours = bert_hf.embed_texts(src, texts, batch_size=16)
  ref_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), pad_token="[PAD]")
  batch = ref_tok(texts, padding=True, truncation=True, max_length=24, return_tensors="np")
  ids = bert_hf.BertTokenizer.from_model_dir(src).encode_rows(texts)
  assert [r for r, _ in ids] == [list(np.asarray(r)[np.asarray(m, bool)]) for r, m in
                                 zip(batch["input_ids"], batch["attention_mask"])]
  assert max(len(r) for r, _ in ids) == 24  # one report is truncated
  with torch.no_grad():
    hidden = model(input_ids=torch.from_numpy(batch["input_ids"]),
                   attention_mask=torch.from_numpy(batch["attention_mask"])).last_hidden_state
  ref = torch.nn.functional.normalize(torch.from_numpy(torch_mean_pool(hidden, batch["attention_mask"])), dim=-1)
  assert ours.shape == (42, 64) and ours.dtype == np.float32
  err = np.abs(ours - ref.numpy()).max()
  assert err < 1e-4, f"max abs diff {err:.2e}"


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers(asset, capsys):
  model_dir = asset("minilm")
  pipeline = bert_hf.read_pipeline(model_dir)
  assert pipeline == bert_hf.Pipeline(pooling="mean", normalize=True, max_length=256)
  long_report = " ".join(REPORTS * 12)  # > 256 tokens: truncated as sentence-transformers truncates
  texts = REPORTS + [long_report]
  ours = bert_hf.embed_texts(model_dir, texts)

  # Token ids are those of the directory's tokenizer.json (its stored padding to 128 and truncation at
  # 128 are defaults that HF overrides per call, as sentence-transformers does with max_seq_length).
  ref_file = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
  ref_file.no_padding()
  ref_file.enable_truncation(256)
  rows = bert_hf.BertTokenizer.from_model_dir(model_dir).encode_rows(texts)
  assert [r for r, _ in rows] == [e.ids for e in ref_file.encode_batch(texts)]
  assert len(rows[-1][0]) == 256 and rows[-1][0][0] == 101 and rows[-1][0][-1] == 102

  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
  hf_rows = [list(r[m.bool()].numpy()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]
  assert [r for r, _ in rows] == hf_rows
  ref_model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    hidden = ref_model(**batch).last_hidden_state
  ref = torch.nn.functional.normalize(torch.from_numpy(torch_mean_pool(hidden, batch["attention_mask"].numpy())),
                                      dim=-1)
  err = np.abs(ours - ref.numpy()).max()
  with capsys.disabled():
    print(f"\nall-MiniLM-L6-v2 on {len(texts)} radiology texts: max |flax - torch| = {err:.2e} (unit vectors)")
  assert ours.shape == (len(texts), 384) and err < 1e-4
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
  _, _, ignored = bert_hf.load_bert(model_dir)
  assert ignored == ["embeddings.position_ids"]
