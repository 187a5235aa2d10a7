"""optim.py: regex param groups, frozen params kept out of the optimizer, layer-wise lr decay."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cxrclip_jax import optim
from cxrclip_jax.train.state import split

PARAMS = {
    "vision_model": {"embeddings": {"patch_embedding": {"kernel": np.ones((4, 4))}},
                     "encoder": {f"layers_{i}": {"mlp": {"kernel": np.ones((4, 4)), "bias": np.ones(4)}}
                                 for i in range(3)},
                     "post_layernorm": {"weight": np.ones(4)}},
    "text_encoder": {"model": {"layers_0": {"q_proj": {"kernel": np.ones((4, 4)),
                                                       "lora": {"a": np.ones((4, 2)), "b": np.ones((2, 4))}}}}},
    "logit_scale": np.float32(2.0),
}
GROUPS = ((r"^text_encoder/.*/lora/", {"lr_mult": 2.0}), (r"^text_encoder/", {"frozen": True}),
          (r"post_layernorm", {"wd": 0.3}))
DECAY = {"rate": 0.5, "tower": "vision_model", "num_layers": 3, "embed_regex": r"^vision_model/embeddings/"}


def _flat(tree):
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def test_groups_first_match_wins_and_frozen_params_get_no_label():
  labels, hyper = optim.param_labels(PARAMS, GROUPS)
  flat = _flat(labels)
  assert not any(k.startswith("text_encoder/model/layers_0/q_proj/kernel") for k in flat)  # frozen
  assert hyper[flat["text_encoder/model/layers_0/q_proj/lora/a"]] == (2.0, None)  # decayed at the default
  assert hyper[flat["vision_model/post_layernorm/weight"]] == (1.0, 0.3)  # a group overrides no-decay
  assert hyper[flat["vision_model/encoder/layers_0/mlp/bias"]] == (1.0, 0.0)  # biases: no decay
  assert hyper[flat["logit_scale"]] == (1.0, 0.0)
  mask = _flat(optim.trainable_mask(PARAMS, GROUPS))
  assert mask["text_encoder/model/layers_0/q_proj/kernel"] is False and mask["logit_scale"] is True


def test_frozen_params_are_absent_from_the_optimizer_state():
  trainable, frozen = split(PARAMS, optim.trainable_mask(PARAMS, GROUPS))
  assert "text_encoder/model/layers_0/q_proj/kernel" in _flat(frozen)
  tx, _ = optim.build(trainable, lr=1e-3, total_steps=10, groups=GROUPS)
  state = tx.init(jax.tree.map(jnp.asarray, trainable))
  # Adam's two moments, for the trainable params only (step counts aside: int32 scalars).
  n_state = sum(x.size for x in jax.tree.leaves(state) if x.dtype == jnp.float32)
  n_trainable = sum(np.size(x) for x in jax.tree.leaves(trainable))
  assert n_state == 2 * n_trainable


def test_layer_wise_decay_values_per_block():
  labels, hyper = optim.param_labels(PARAMS, (), DECAY)
  mult = {k: hyper[v][0] for k, v in _flat(labels).items()}
  # n = 3 blocks: embeddings are layer 0, block i is layer i + 1, what follows is layer n + 1.
  assert mult["vision_model/embeddings/patch_embedding/kernel"] == pytest.approx(0.5 ** 4)
  for i in range(3):
    assert mult[f"vision_model/encoder/layers_{i}/mlp/kernel"] == pytest.approx(0.5 ** (3 - i))
  assert mult["vision_model/post_layernorm/weight"] == pytest.approx(1.0)
  assert mult["text_encoder/model/layers_0/q_proj/kernel"] == 1.0 and mult["logit_scale"] == 1.0


def test_the_update_uses_each_groups_learning_rate():
  """One plain-SGD-sized check: Adam's first update is lr x sign(grad) (per param, eps aside)."""
  trainable, _ = split(PARAMS, optim.trainable_mask(PARAMS, GROUPS))
  params = jax.tree.map(jnp.asarray, trainable)
  tx, schedule = optim.build(params, lr=1e-2, total_steps=10, warmup_steps=0, weight_decay=0.0,
                             groups=GROUPS, layer_decay=DECAY, grad_clip=None)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  up = _flat(updates)
  assert float(schedule(0)) == pytest.approx(1e-2)
  np.testing.assert_allclose(up["text_encoder/model/layers_0/q_proj/lora/a"], -2e-2, rtol=1e-4)
  np.testing.assert_allclose(up["vision_model/encoder/layers_1/mlp/kernel"], -1e-2 * 0.25, rtol=1e-4)
  np.testing.assert_allclose(up["vision_model/embeddings/patch_embedding/kernel"], -1e-2 / 16, rtol=1e-4)
  assert isinstance(tx, optax.GradientTransformation)
