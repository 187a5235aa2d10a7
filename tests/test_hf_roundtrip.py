"""HF -> Flax -> HF round trips, the MNTP head, strict key checks, and the real SmolLM2-135M."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_tiny
from cxrclip_jax.export import hf, keymap, safetensors_io
from cxrclip_jax.models import lora as lora_lib


@pytest.mark.parametrize("case", ["llama_gqa", "llama3_rope_tied", "qwen2", "mistral"])
def test_round_trip_reloads_identically(tmp_path, case):
  model = hf_tiny.make_model(case)
  src = hf_tiny.save(model, tmp_path / "src")
  module, params, _ = hf.load_text_encoder(src)
  out = hf.save_text_encoder(tmp_path / "out", module.config, params)
  reloaded, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  ref_sd, new_sd = model.state_dict(), reloaded.state_dict()
  assert {k: tuple(v.shape) for k, v in ref_sd.items()} == {k: tuple(v.shape) for k, v in new_sd.items()}
  ids, mask = hf_tiny.random_batch(2, 10, seed=3)
  a = hf_tiny.torch_hidden(model, ids, mask, bidirectional=False)
  b = hf_tiny.torch_hidden(reloaded.eval(), ids, mask, bidirectional=False)
  assert np.abs(a - b)[mask.astype(bool)].max() < 1e-5


def test_lora_is_merged_on_export(tmp_path):
  model = hf_tiny.make_model("llama_gqa")
  src = hf_tiny.save(model, tmp_path / "src")
  cfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
  module, params, _ = hf.load_text_encoder(src, lora=cfg)
  ids, mask = hf_tiny.random_batch(2, 8, seed=4)
  hidden = lambda m, p: np.asarray(m.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask),
                                          method=lambda mm, i, a: mm.model(i, a)))
  # load_text_encoder with lora gives the LoRA params their init; give B values so merging matters.
  rng = np.random.default_rng(0)
  with_lora = _init_lora(module, params, rng)
  expected = hidden(module, with_lora)
  out = hf.save_text_encoder(tmp_path / "out", module.config, with_lora, lora=cfg)
  plain, plain_params, _ = hf.load_text_encoder(out)
  np.testing.assert_allclose(hidden(plain, plain_params), expected, atol=1e-5)


def _init_lora(module, params, rng):
  import flax.linen as nn
  import jax
  full = jax.tree.map(np.asarray, nn.unbox(module.init(jax.random.key(0), *hf._dummy_text_inputs())["params"]))
  flat, base = keymap.flatten(full), keymap.flatten(params)
  for k in flat:
    if k in base:
      flat[k] = base[k]
    elif k.endswith("lora/b"):
      flat[k] = rng.normal(scale=0.1, size=flat[k].shape).astype(np.float32)
  return keymap.unflatten(flat)


@pytest.mark.parametrize("case", ["llama_bias_untied", "llama3_rope_tied"])
def test_mntp_logits_match_causal_lm(tmp_path, case):
  model = hf_tiny.make_model(case, causal_lm=True)
  src = hf_tiny.save(model, tmp_path / "src")
  module, params = hf.load_mntp(src)
  causal = module.clone(config=module.config.__class__(**{**module.config.__dict__, "is_causal": True}))
  ids, mask = hf_tiny.random_batch(2, 10, seed=5, padding_side="right")
  _, logits = causal.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  assert np.abs(np.asarray(logits) - ref)[mask.astype(bool)].max() < 1e-4


def test_strict_keys_name_the_offender(tmp_path):
  model = hf_tiny.make_model("llama_gqa")
  src = hf_tiny.save(model, tmp_path / "src")
  tensors = safetensors_io.read(src / "model.safetensors")
  def rewrite(mutate):
    d = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    (d / "config.json").write_text((src / "config.json").read_text())
    t = {k: np.array(v) for k, v in tensors.items()}
    mutate(t)
    safetensors_io.write(d / "model.safetensors", t)
    return d
  with pytest.raises(keymap.KeyMismatchError, match=r"missing HF key 'layers\.1\.mlp\.up_proj\.weight'"):
    hf.load_text_encoder(rewrite(lambda t: t.pop("layers.1.mlp.up_proj.weight")))
  with pytest.raises(keymap.KeyMismatchError, match=r"unused HF keys: 'layers\.0\.extra\.weight'"):
    hf.load_text_encoder(rewrite(lambda t: t.update({"layers.0.extra.weight": np.zeros(3, np.float32)})))
  with pytest.raises(keymap.KeyMismatchError, match=r"'norm\.weight' has shape \(5,\)"):
    hf.load_text_encoder(rewrite(lambda t: t.update({"norm.weight": np.zeros(5, np.float32)})))


def test_pickle_only_directory_is_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(hf_tiny.tiny_config("llama").to_dict()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(ValueError, match="only pickle weights"):
    hf.load_text_encoder(tmp_path)


def test_bf16_export_reads_back(tmp_path):
  model = hf_tiny.make_model("qwen2")
  src = hf_tiny.save(model, tmp_path / "src")
  module, params, _ = hf.load_text_encoder(src)
  import ml_dtypes
  bf16 = {k: v for k, v in keymap.flatten(params).items()}
  bf16 = keymap.unflatten({k: v.astype(ml_dtypes.bfloat16) for k, v in bf16.items()})
  out = hf.save_text_encoder(tmp_path / "out", module.config, bf16)
  reloaded = transformers.AutoModel.from_pretrained(out)
  assert reloaded.dtype == torch.bfloat16
  ref = model.state_dict()["layers.0.self_attn.q_proj.weight"].to(torch.bfloat16)
  assert torch.equal(reloaded.state_dict()["layers.0.self_attn.q_proj.weight"], ref)


@pytest.mark.slow
def test_real_smollm2_matches_transformers_on_iu_reports(asset, capsys):
  from data_pipelines.tokenization import Llm2VecTokenizer
  import glob, xml.etree.ElementTree as ET
  model_dir = asset("smollm2")
  texts = []
  for f in sorted(glob.glob(str(asset("iu_reports") / "ecgen-radiology" / "*.xml")))[:40]:
    parts = {a.get("Label"): (a.text or "") for a in ET.parse(f).getroot().iter("AbstractText")}
    text = f"{parts.get('FINDINGS') or ''} {parts.get('IMPRESSION') or ''}".strip()
    if text:
      texts.append(text)
  texts = texts[:6]
  tok = Llm2VecTokenizer.from_model_dir(model_dir, padding_side="left")
  batch = tok(texts)
  module, params, _ = hf.load_text_encoder(model_dir, is_causal=True)
  ours = np.asarray(module.apply({"params": params}, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                                 method=lambda m, i, a: m.model(i, a)))
  ref_model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
  ref = hf_tiny.torch_hidden(ref_model, batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64),
                             bidirectional=False)
  err = np.abs(ours - ref)[batch["attention_mask"].astype(bool)].max()
  with capsys.disabled():
    print(f"\nSmolLM2-135M on {len(texts)} real IU reports: max |flax - torch| = {err:.2e} "
          f"(hidden-state scale {np.abs(ref).mean():.2f})")
  assert err <= 1e-3
