"""Pooling modes vs plain numpy references, latent attention vs torch, LoRA vs its formula."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cxrclip_jax.export import hf, keymap
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models import pooling
from cxrclip_jax.models.layers import Dense


def _ragged(side, seed=0, b=4, l=9, d=6):
  """The same token states laid out with left or right padding; the embed mask covers a
  contiguous run of trailing real tokens (the text after an instruction)."""
  rng = np.random.default_rng(seed)
  tokens = rng.normal(size=(b, l, d)).astype(np.float32)
  real = rng.integers(3, l + 1, b)
  pooled = np.minimum(real, rng.integers(1, l, b))
  x = rng.normal(size=(b, l, d)).astype(np.float32)  # padding positions hold junk
  attn, emb = np.zeros((b, l), np.int32), np.zeros((b, l), np.int32)
  for i in range(b):
    start = l - real[i] if side == "left" else 0
    x[i, start:start + real[i]] = tokens[i, :real[i]]
    attn[i, start:start + real[i]] = 1
    emb[i, start + real[i] - pooled[i]:start + real[i]] = 1
  return x, attn, emb


def _reference(mode, x, attn, emb):
  """One example at a time, the way llm2vec reads it (slices of the pooled tokens)."""
  out = []
  for xi, ai, ei in zip(x, attn, emb):
    toks = xi[ei.astype(bool)]
    if mode == "mean":
      out.append(toks.mean(0))
    elif mode == "weighted_mean":
      w = np.arange(1, len(toks) + 1, dtype=np.float32)
      out.append((toks * (w / w.sum())[:, None]).sum(0))
    elif mode in ("eos_token", "last_token"):
      out.append(xi[np.nonzero(ai)[0][-1]])
  return np.stack(out)


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "last_token"])
def test_pooling_matches_reference_for_both_padding_sides(mode):
  results = []
  for side in ("left", "right"):
    x, attn, emb = _ragged(side)
    ours = np.asarray(pooling.pool(mode, jnp.asarray(x), jnp.asarray(emb), attention_mask=jnp.asarray(attn)))
    np.testing.assert_allclose(ours, _reference(mode, x, attn, emb), atol=1e-6)
    results.append(ours)
  # The same texts pool to the same vectors whatever the padding side.
  np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_bos_pooling_picks_first_bos_per_row():
  x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  ids = np.array([[7, 7, 1, 5, 6], [1, 4, 1, 5, 6]])
  ours = np.asarray(pooling.pool("bos_token", jnp.asarray(x), jnp.ones((2, 5)), input_ids=jnp.asarray(ids),
                                 bos_token_id=1))
  np.testing.assert_array_equal(ours, np.stack([x[0, 2], x[1, 0]]))


def test_empty_embed_mask_gives_zeros_not_nan():
  x = jnp.ones((1, 4, 3))
  for mode in ("mean", "weighted_mean"):
    assert np.all(np.asarray(pooling.pool(mode, x, jnp.zeros((1, 4)))) == 0)


class TorchLatentAttention(torch.nn.Module):
  """The layout of the authors' vendored llm2vec latent attention, written out in torch."""

  def __init__(self, d, n_latents, heads):
    super().__init__()
    self.latents = torch.nn.Parameter(torch.randn(n_latents, d))
    self.multihead_attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    self.mlp = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.Linear(d, d))

  def forward(self, hidden, embed_mask):
    lat = self.latents.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    out, _ = self.multihead_attn(hidden, lat, lat)
    out = self.mlp(out)
    m = embed_mask.unsqueeze(-1).float()
    return (out * m).sum(1) / m.sum(1)


def test_latent_attention_matches_torch():
  torch.manual_seed(0)
  d, n_lat, heads = 16, 12, 8
  ref = TorchLatentAttention(d, n_lat, heads).eval()
  with torch.no_grad():
    ref.multihead_attn.in_proj_bias.normal_()
    ref.multihead_attn.out_proj.bias.normal_()
  x, attn, emb = _ragged("left", d=d)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x), torch.from_numpy(emb)).numpy()
  tensors = {f"latent_attn.{k}": v.detach().numpy() for k, v in ref.state_dict().items()}
  module = pooling.LatentAttention(num_latents=n_lat, num_heads=heads)
  shapes = {k[len("latent_attn/"):]: v for k, v in
            hf.abstract_shapes(hf.TextEncoder(hf.LlmConfig(hidden_size=d, num_hidden_layers=1, num_attention_heads=2,
                                                           num_key_value_heads=2, head_dim=8, vocab_size=8),
                                              pooling="latent_attention", num_latents=n_lat, latent_heads=heads),
                               *hf._dummy_text_inputs()).items() if k.startswith("latent_attn/")}
  table = [(h, f[len("latent_attn/"):], t) for h, f, t in hf.LATENT_ATTN_KEYS]
  params, _ = keymap.to_flax(tensors, table, shapes)
  ours = np.asarray(module.apply({"params": params}, jnp.asarray(x), jnp.asarray(emb)))
  np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_unknown_latent_layout_is_rejected_naming_the_keys():
  tensors = {"latent_attn.cross_attend_blocks.0.fn.to_q.weight": np.zeros((4, 4), np.float32)}
  with pytest.raises(keymap.KeyMismatchError, match="cross_attend_blocks"):
    keymap.to_flax(tensors, hf.LATENT_ATTN_KEYS, {}, optional=[r"latent_attn\.latents"])


class _Attn(nn.Module):
  lora: lora_lib.LoraConfig

  @nn.compact
  def __call__(self, x):
    return Dense(6, ("embed", "heads"), lora=self.lora, name="q_proj")(x) + Dense(
        6, ("embed", "heads"), lora=self.lora, name="k_proj")(x)


def test_lora_follows_peft_formula_and_merges_exactly():
  cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, target=r"q_proj$")
  module = _Attn(cfg)
  x = jax.random.normal(jax.random.key(0), (3, 5))
  fresh = jax.tree.map(np.asarray, nn.unbox(module.init(jax.random.key(1), x)["params"]))
  assert "lora" in fresh["q_proj"] and "lora" not in fresh["k_proj"]  # chosen by the path regex
  assert np.all(fresh["q_proj"]["lora"]["b"] == 0)  # peft starts B at zero: no change at init
  params = jax.tree.map(np.copy, fresh)
  params["q_proj"]["lora"]["b"] = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
  y = np.asarray(module.apply({"params": params}, x))
  xn, q, k = np.asarray(x), params["q_proj"], params["k_proj"]
  expected = xn @ q["kernel"] + (xn @ q["lora"]["a"] @ q["lora"]["b"]) * 2.0 + xn @ k["kernel"]
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  merged = lora_lib.merge(params, cfg)
  assert "lora" not in merged["q_proj"]
  np.testing.assert_allclose(xn @ merged["q_proj"]["kernel"] + xn @ merged["k_proj"]["kernel"], y,
                             rtol=1e-5, atol=1e-5)


def test_lora_targets_by_regex_over_module_paths():
  cfg = lora_lib.LoraConfig(target=r"self_attn/(q_proj|v_proj)$")
  assert cfg.targets("layers_3/self_attn/q_proj") and cfg.targets("layers_0/self_attn/v_proj")
  assert not cfg.targets("layers_3/self_attn/k_proj") and not cfg.targets("layers_3/mlp/up_proj")
