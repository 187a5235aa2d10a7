"""Attention-probability dropout (HF `attention_dropout`, llm2vec SimCSE's 0.3) in the LLM encoder."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_tiny
from cxrclip_jax.export import hf
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.llm_encoder import Attention, LlmConfig, LlmModel, attention_mask_4d

RATE = 0.3


def _hidden(module, params, ids, mask, deterministic=True, key=None):
  rngs = {"dropout": key} if key is not None else {}
  return module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), rngs=rngs,
                      method=lambda m, i, a: m.model(i, a, deterministic))


def _keep_masks(module, params, ids, mask, key):
  """The keep masks the attention dropout drew, layer by layer, as (B, N, L, L) bool: recorded
  from the Dropout's own output (a kept probability is non-zero; a zero one contributes nothing
  whatever the mask says)."""
  masks = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout) and context.module.name == "attention_dropout":
      b, k, g, l, s = out.shape
      masks.append(np.asarray(out != 0).reshape(b, k * g, l, s))
    return out

  with nn.intercept_methods(record):
    _hidden(module, params, ids, mask, deterministic=False, key=key)
  return masks


def _torch_train_mode(model, rate):
  """HF eager attention (sdpa takes its own dropout path, which no mask can be injected into)."""
  model.set_attn_implementation("eager")
  for layer in model.layers:
    layer.self_attn.attention_dropout = rate
  return model.train()


def _additive_mask(mask):
  # Eager attention adds the mask; a boolean 4D mask would be added as 0/1.
  keys = torch.from_numpy(mask)[:, None, None, :].bool().expand(-1, 1, mask.shape[1], -1)
  return torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(torch.float32).min)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  model = hf_tiny.make_model("llama_gqa")
  return model, hf_tiny.save(model, tmp_path_factory.mktemp("m") / "llama_gqa")


def test_config_reads_and_writes_hf_attention_dropout():
  hf_config = hf_tiny.tiny_config("llama", attention_dropout=RATE).to_dict()
  config = LlmConfig.from_hf(hf_config)
  assert config.attention_dropout == RATE and config.to_hf()["attention_dropout"] == RATE
  assert LlmConfig.from_hf({**hf_config, "attention_dropout": None}).attention_dropout == 0.0


def test_without_dropout_the_fast_path_is_bitwise_unchanged(tiny):
  _, model_dir = tiny
  ids, mask = hf_tiny.random_batch(3, 12, seed=1)
  plain, params, _ = hf.load_text_encoder(model_dir)
  with_rate, _, _ = hf.load_text_encoder(model_dir, attention_dropout=RATE)
  base = np.asarray(_hidden(plain, params, ids, mask))
  # Evaluation never drops; rate 0 in training mode takes the same path.
  np.testing.assert_array_equal(np.asarray(_hidden(with_rate, params, ids, mask)), base)
  np.testing.assert_array_equal(
      np.asarray(_hidden(plain, params, ids, mask, deterministic=False, key=jax.random.key(0))), base)
  # Evaluation draws no random bits at all (the check can see them: training does).
  jaxpr = lambda deterministic: str(jax.make_jaxpr(
      lambda p: _hidden(with_rate, p, ids, mask, deterministic, jax.random.key(0)))(params))
  assert "random_bits" not in jaxpr(True) and "random_bits" in jaxpr(False)


@pytest.mark.parametrize("case", ["llama_gqa", "qwen2"])  # GQA head order; q/k/v biases
def test_dropout_equals_transformers_with_the_same_keep_mask(tmp_path, case):
  """Forward and gradients equal HF's eager attention in training mode when torch's dropout is
  replaced by the keep masks this model drew: same place (after softmax), same 1/(1-p) scaling,
  same head order under GQA."""
  model = hf_tiny.make_model(case)
  model_dir = hf_tiny.save(model, tmp_path / case)
  ids, mask = hf_tiny.random_batch(3, 12, seed=1)
  module, params, _ = hf.load_text_encoder(model_dir, attention_dropout=RATE)
  key = jax.random.key(7)
  keep = _keep_masks(module, params, ids, mask, key)
  assert len(keep) == 2
  real = mask.astype(bool)
  kept = np.concatenate([k[np.broadcast_to(real[:, None, None, :], k.shape)] for k in keep])
  assert abs(kept.mean() - (1 - RATE)) < 0.03

  queue = [torch.from_numpy(k.copy()) for k in keep]

  def injected(x, p=0.5, training=True, inplace=False):
    assert training and p == RATE
    return x * queue.pop(0).to(x.dtype) / (1 - p)

  _torch_train_mode(model, RATE)
  weight = torch.from_numpy(real.astype(np.float32))[..., None]
  orig = torch.nn.functional.dropout
  torch.nn.functional.dropout = injected
  try:
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=_additive_mask(mask)).last_hidden_state
    (ref * weight).sum().backward()
  finally:
    torch.nn.functional.dropout = orig
  assert not queue
  ours = np.asarray(_hidden(module, params, ids, mask, deterministic=False, key=key))
  assert np.abs(ours - ref.detach().numpy())[real].max() < 1e-4
  deterministic = np.asarray(_hidden(module, params, ids, mask))
  assert np.abs(ours - deterministic)[real].max() > 1e-2  # dropout really happened

  loss = lambda p: (_hidden(module, p, ids, mask, deterministic=False, key=key) * real[..., None]).sum()
  grads = jax.grad(loss)(params)["model"]
  for ours_g, theirs in ((grads["embed_tokens"]["weight"], model.embed_tokens.weight.grad),
                         (grads["layers_0"]["self_attn"]["q_proj"]["kernel"], model.layers[0].self_attn.q_proj.weight.grad.T),
                         (grads["layers_0"]["self_attn"]["v_proj"]["kernel"], model.layers[0].self_attn.v_proj.weight.grad.T)):
    theirs = theirs.numpy()
    assert np.abs(np.asarray(ours_g) - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())


def test_expected_output_over_many_rngs_is_the_deterministic_output():
  """E[dropout(P)] = P and the attention output is linear in P: the mean over keys converges to
  the evaluation output (within 5 standard errors, elementwise)."""
  config = LlmConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                     attention_dropout=RATE)
  attention = Attention(config)
  b, l = 2, 6
  x = jax.random.normal(jax.random.key(0), (b, l, config.hidden_size))
  positions = jnp.broadcast_to(jnp.arange(l), (b, l))
  mask = attention_mask_4d(jnp.asarray([[1] * l, [0, 0] + [1] * (l - 2)]), is_causal=False)
  params = attention.init(jax.random.key(1), x, positions, mask)
  expected = np.asarray(attention.apply(params, x, positions, mask))
  sample = jax.jit(jax.vmap(lambda k: attention.apply(params, x, positions, mask, False, rngs={"dropout": k})))
  n = 2000
  samples = np.asarray(sample(jax.random.split(jax.random.key(2), n)))  # (n, B, L, D)
  mean, stderr = samples.mean(0), samples.std(0) / np.sqrt(n)
  assert samples.std(0).mean() > 0.1 * np.abs(expected).mean()  # the samples do vary
  assert np.all(np.abs(mean - expected) <= 5 * stderr + 1e-6)


def test_lora_and_remat_keep_working_with_dropout():
  """Remat recomputes the dropout mask from the same rng: equal outputs and gradients; LoRA
  branches (with their own dropout) get gradients through the dropped attention."""
  lora = lora_lib.LoraConfig(rank=4, alpha=8.0, dropout=0.05)
  config = LlmConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_dropout=RATE, lora=lora)
  ids, mask = hf_tiny.random_batch(2, 10, seed=3)
  ids = ids % 64
  params = nn.unbox(jax.jit(LlmModel(config).init)(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask))["params"])
  params = jax.tree_util.tree_map_with_path(  # B != 0 so LoRA changes the output
      lambda p, v: v + 0.1 if "lora" in jax.tree_util.keystr(p) else v, params)
  key = jax.random.key(5)

  def loss(remat):
    module = LlmModel(dataclasses.replace(config, remat=remat))
    return lambda p: module.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask), False,
                                  rngs={"dropout": key}).sum()

  (value, grads), (value_remat, grads_remat) = (jax.jit(jax.value_and_grad(loss(r)))(params) for r in (False, True))
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads)):  # recomputed in another order
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))
  lora_b = grads["layers_0"]["self_attn"]["q_proj"]["lora"]["b"]
  assert np.isfinite(lora_b).all() and np.abs(lora_b).max() > 0
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
