"""Flax text encoder vs PyTorch transformers on tiny random configs (levanter-style parity)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_tiny
from cxrclip_jax.export import hf


def _flax_hidden(model_dir, ids, mask, causal):
  module, params, _ = hf.load_text_encoder(model_dir, is_causal=causal)
  hidden = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), method=lambda m, i, a: m.model(i, a))
  return np.asarray(hidden)


@pytest.mark.parametrize("case", sorted(hf_tiny.CASES))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_hidden_states_match_transformers(tmp_path, case, causal, padding_side):
  model = hf_tiny.make_model(case)
  model_dir = hf_tiny.save(model, tmp_path / case)
  ids, mask = hf_tiny.random_batch(3, 12, seed=1, padding_side=padding_side)
  ref = hf_tiny.torch_hidden(model, ids, mask, bidirectional=not causal)
  ours = _flax_hidden(model_dir, ids, mask, causal)
  real = mask.astype(bool)
  err = np.abs(ours - ref)[real].max()
  assert err < 1e-4, f"{case} max abs diff {err:.2e}"


def test_remat_and_bf16_compute(tmp_path):
  model = hf_tiny.make_model("llama_gqa")
  model_dir = hf_tiny.save(model, tmp_path / "m")
  ids, mask = hf_tiny.random_batch(2, 10, seed=2)
  base = _flax_hidden(model_dir, ids, mask, causal=False)
  module, params, _ = hf.load_text_encoder(model_dir, remat=True)
  hidden = lambda m, p: m.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask),
                                method=lambda mm, i, a: mm.model(i, a))
  np.testing.assert_allclose(np.asarray(hidden(module, params)), base, atol=1e-6)
  # Remat changes what the backward pass recomputes, not the gradient.
  loss = lambda m: (lambda p: hidden(m, p).astype(jnp.float32).sum())
  g_remat = jax.grad(loss(module))(params)
  g_plain = jax.grad(loss(hf.load_text_encoder(model_dir)[0]))(params)
  for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  bf16, bf16_params, _ = hf.load_text_encoder(model_dir, dtype="bfloat16")
  out = np.asarray(hidden(bf16, bf16_params)).astype(np.float32)
  real = mask.astype(bool)
  assert np.abs(out - base)[real].max() < 0.1 * np.abs(base)[real].max()


def test_token_ids_outside_the_embedding_table_are_an_error(tmp_path):
  """Under jit, jnp.take fills an out-of-range row with NaN; the host-side guard names the id."""
  from cxrclip_jax.models.llm_encoder import check_token_ids
  check_token_ids(np.array([[0, 5, 255]]), 256)
  with pytest.raises(ValueError, match="token id 300 .*largest id 300, vocab_size 256"):
    check_token_ids(np.array([[0, 5, 300]]), 256)
  with pytest.raises(ValueError, match="token id -1"):
    check_token_ids(np.array([[-1, 5]]), 256)
