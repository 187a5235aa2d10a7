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
