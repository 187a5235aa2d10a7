"""GradCache (optim.contrastive_chunks): chunked, checkpointed embedding gives the single-pass
full-batch contrastive loss and gradients (fp32, dropout-free forward), on one device and on a
mesh, for the CLIP stage (both towers, cached or LoRA text side) and the supervised text stage."""
import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrclip_jax import optim, sharding
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.clip import ClipConfig, DualTower
from cxrclip_jax.models.llm_encoder import LlmConfig
from cxrclip_jax.models.text_encoder import TextEncoder
from cxrclip_jax.models.vision import VitConfig
from cxrclip_jax.tasks import clip_loss, supervised
from cxrclip_jax.train.gradcache import chunked_apply
from cxrclip_jax.train.state import split

B = 8
SCALE = 5.0  # supervised cosine scale: gradients of O(1), so 1e-5 is a tight absolute bound (50 in the recipe)
# No dropout anywhere: exactness is for the deterministic forward (chunks fold their index into the rng).
TINY_LLM = LlmConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, is_causal=False)
TINY_VIT = VitConfig(family="siglip", image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                     num_hidden_layers=1, num_attention_heads=2, pooling="mean")


def _grads(loss_fn, params, frozen, batch, jit=True):
  f = lambda p, b: jax.value_and_grad(lambda q: loss_fn(q, frozen, b, jax.random.key(3)), has_aux=True)(p)
  (loss, aux), grads = (jax.jit(f) if jit else f)(params, batch)
  return jax.device_get((loss, aux, grads))


def _assert_same(a, b):
  (la, auxa, ga), (lb, auxb, gb) = a, b
  np.testing.assert_allclose(la, lb, rtol=1e-6, atol=1e-6)
  for k in auxa:
    np.testing.assert_allclose(auxa[k], auxb[k], atol=1e-6)
  assert jax.tree.structure(ga) == jax.tree.structure(gb)
  worst = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
  assert worst <= 1e-5, worst
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(ga)) > 1e-4  # the gradients are not all ~0


def _clip_setup(text_mode):
  rng = np.random.default_rng(0)
  text = None if text_mode == "cached" else dataclasses.replace(TINY_LLM, lora=lora_lib.LoraConfig(rank=4, alpha=8.0))
  # Logit scale 1 (not CLIP's 1/0.07): gradients of O(1), so 1e-5 is a tight absolute bound.
  model = DualTower(TINY_VIT, ClipConfig(embed_dim=8, text_mode=text_mode, init_log_scale=0.0), text)
  # A repeated text id: multi-positive targets couple rows of different chunks too.
  batch = {"image": rng.normal(size=(B, 16, 16, 3)).astype(np.float32),
           "text_id": np.array([0, 1, 2, 3, 0, 5, 6, 7]), "study_id": np.arange(B)}
  if text_mode == "cached":
    batch["text_emb"] = rng.normal(size=(B, 12)).astype(np.float32)
  else:
    batch["input_ids"] = rng.integers(0, 64, (B, 10)).astype(np.int32)
    mask = np.ones((B, 10), np.int32)
    mask[1, :4] = mask[6, :2] = 0  # left padding
    batch["attention_mask"] = batch["embed_mask"] = mask
  text_in = {k: batch[k][:2] for k in ("text_emb", "input_ids", "attention_mask", "embed_mask") if k in batch}
  params = nn.unbox(model.init(jax.random.key(0), batch["image"][:2], text_in)["params"])
  groups = ((r"^text_encoder/.*/lora/", {}), (r"^text_encoder/", {"frozen": True})) if text_mode == "lora" else ()
  trainable, frozen = split(params, optim.trainable_mask(params, groups))
  return model, trainable, frozen, batch


def test_clip_chunked_grads_equal_single_pass():
  """Both towers chunked (ViT, and the LLM with LoRA; a cached text side is the adapter alone)."""
  model, params, frozen, batch = _clip_setup("lora")
  runs = {c: _grads(clip_loss.make_loss_fn(model, contrastive_chunks=c), params, frozen, batch) for c in (1, 4)}
  _assert_same(runs[4], runs[1])


def _supervised_setup(n_neg=2):
  rng = np.random.default_rng(1)
  model = TextEncoder(TINY_LLM, pooling="mean")
  batch = {}
  for part, shape in (("query", (B,)), ("positive", (B,)), ("negative", (B, n_neg))):
    ids = rng.integers(0, 64, shape + (10,)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[..., :rng.integers(0, 4)] = 0
    batch.update({f"{part}_input_ids": ids, f"{part}_attention_mask": mask, f"{part}_embed_mask": mask})
  batch["query_embed_mask"] = batch["query_embed_mask"].copy()
  batch["query_embed_mask"][:, :6] = 0  # an instruction: attended to, not pooled
  batch["negative_valid"] = np.ones((B, n_neg), bool)
  batch["negative_valid"][2, 1] = False
  ids = jnp.zeros((2, 8), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), ids, jnp.ones_like(ids), jnp.ones_like(ids))["params"])
  return model, params, batch


@pytest.fixture(scope="module")
def supervised_case():
  """(model, params, batch, the single-pass (loss, aux, grads) on one device)."""
  model, params, batch = _supervised_setup()
  return model, params, batch, _grads(supervised.make_loss_fn(model, SCALE), params, {}, batch)


def test_supervised_chunked_grads_equal_single_pass(supervised_case):
  model, params, batch, reference = supervised_case
  _assert_same(_grads(supervised.make_loss_fn(model, SCALE, contrastive_chunks=4), params, {}, batch), reference)


def test_chunks_keep_row_order_and_fold_the_chunk_into_the_rng():
  x = jnp.arange(B * 3.0).reshape(B, 3)
  out = chunked_apply(lambda p, xs, r: (xs * p, jax.random.key_data(r)[None].repeat(xs.shape[0], 0)), 2.0, x,
                      jax.random.key(0), 4)
  np.testing.assert_array_equal(out[0], x * 2)
  # Row i is in chunk i % 4 (rows j, j+4, ... as train/step.py's micro-batches).
  rng_rows = np.asarray(out[1])
  for i in range(B):
    np.testing.assert_array_equal(rng_rows[i], jax.random.key_data(jax.random.fold_in(jax.random.key(0), i % 4)))


def test_a_batch_not_divisible_by_the_chunks_is_an_error():
  model, params, frozen, batch = _clip_setup("cached")
  with pytest.raises(ValueError, match="contrastive_chunks=3 must be >= 1 and divide the global batch"):
    clip_loss.make_loss_fn(model, contrastive_chunks=3)(params, frozen, batch, jax.random.key(0))
  model, params, batch = _supervised_setup()
  with pytest.raises(ValueError, match="contrastive_chunks=3"):
    supervised.make_loss_fn(model, SCALE, contrastive_chunks=3)(params, {}, batch, jax.random.key(0))


def test_chunked_grads_on_a_mesh_equal_1_device(supervised_case):
  """The batch sharded over (data, fsdp) = (2, 2), 2 query rows per device: with 2 chunks each device
  embeds its own row of every chunk (no token ids cross devices), and the result is the unsharded
  single pass's."""
  assert jax.device_count() >= 4, "tests/conftest.py forces 8 CPU devices"
  model, params, batch, reference = supervised_case
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2}, jax.devices()[:4])
  loss_fn = supervised.make_loss_fn(model, SCALE, contrastive_chunks=2)
  grad = jax.value_and_grad(lambda p, b: loss_fn(p, {}, b, jax.random.key(3)), has_aux=True)
  with sharding.activate(mesh):
    on_mesh = sharding.global_batch_from_full(batch, mesh)
    placed = jax.device_put(params, sharding.replicated(mesh))
    compiled = jax.jit(grad).lower(placed, on_mesh).compile()
    (loss, aux), grads = compiled(placed, on_mesh)
  assert not re.search(r"= s32\[[^\]]*\]\S* all-gather\(", compiled.as_text())  # rows stay on their devices
  _assert_same(jax.device_get((loss, aux, grads)), reference)
