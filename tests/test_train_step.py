"""The generic train step: exact gradient accumulation in optimizer updates, the logged lr and
grad norm, and the CLIP logit scale clamped as a parameter (never inside the forward pass)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrclip_jax import losses, optim
from cxrclip_jax.models.clip import MAX_LOG_SCALE, ClipConfig, DualTower
from cxrclip_jax.models.llm_encoder import LlmConfig, LlmForMNTP
from cxrclip_jax.models.vision import VitConfig
from cxrclip_jax.tasks import clip_loss as clip_step
from cxrclip_jax.train.state import TrainState
from cxrclip_jax.train.step import accumulated_grads, make_train_step

TINY_LLM = LlmConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, is_causal=False)


def _mntp_setup(batch_size=8, length=12, seed=0):
  model = LlmForMNTP(TINY_LLM)
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 64, (batch_size, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :3] = 0  # some padding, so rows differ in how many tokens count
  # A different number of masked tokens per row: the token mean is not the mean of row means.
  labels = np.where(rng.random((batch_size, length)) < np.linspace(0.1, 0.6, batch_size)[:, None], ids, -100)
  labels[:, 0] = -100
  labels[0, 5] = ids[0, 5]
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "labels": jnp.asarray(labels)}
  params = model.init(jax.random.key(seed), batch["input_ids"], batch["attention_mask"])["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))

  def loss_fn(p, frozen, b, rng):
    _, logits = model.apply({"params": p}, b["input_ids"], b["attention_mask"])
    loss, count = losses.mntp_loss(logits, b["labels"])
    return loss, {"weight": count.astype(jnp.float32), "count": count.astype(jnp.float32)}
  return params, batch, loss_fn


def test_accumulated_grads_equal_the_full_batch_token_mean():
  params, batch, loss_fn = _mntp_setup()
  rng = jax.random.key(0)
  full_loss, _, full = accumulated_grads(loss_fn, params, {}, batch, rng, 1)
  for k in (2, 4):
    loss, aux, grads = jax.jit(lambda p, b: accumulated_grads(loss_fn, p, {}, b, rng, k))(params, batch)
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(full)):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    assert float(aux["weight"]) == float((batch["labels"][:, 1:] != -100).sum())
  with pytest.raises(ValueError, match="not divisible by accum_steps=3"):
    accumulated_grads(loss_fn, params, {}, batch, rng, 3)


def test_accumulation_keeps_params_schedule_and_logs_in_updates():
  """k micro-batches of b == one batch of k*b, update by update, with warmup: the schedule counts
  optimizer updates (optax.MultiSteps with a micro-step schedule gave [0, 0, 0, 0, 0, 0, 0, 0.25]),
  `lr` is the rate each update used, `grad_norm` the accumulated gradient's."""
  params, batch, loss_fn = _mntp_setup()
  params = jax.device_get(params)
  runs = {}
  for k in (1, 4):
    tx, schedule = optim.build(params, lr=1e-2, total_steps=6, warmup_steps=3, grad_clip=1.0)
    step = make_train_step(loss_fn, tx, schedule, accum_steps=k)
    fresh = jax.tree.map(jnp.array, params)  # the step donates its state
    state = TrainState(step=jnp.zeros((), jnp.int32), params=fresh, opt_state=tx.init(fresh),
                       rng=jax.random.key_data(jax.random.key(1)))
    logs = []
    for _ in range(4):
      state, metrics = step(state, {}, batch)
      logs.append(jax.device_get(metrics))
    runs[k] = (jax.device_get(state.params), logs)
  (p1, log1), (p4, log4) = runs[1], runs[4]
  expected_lr = [float(schedule(i)) for i in range(4)]
  assert expected_lr[0] == 0 and expected_lr[1] > 0 and expected_lr[3] == pytest.approx(1e-2)
  for logs in (log1, log4):
    np.testing.assert_allclose([float(m["lr"]) for m in logs], expected_lr, rtol=1e-6)
  for a, b in zip(log1, log4):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params)))
  assert moved > 1e-3  # the updates were real
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _dual_tower(similarity):
  vit = VitConfig(family="siglip", image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                  num_hidden_layers=1, num_attention_heads=2, pooling="mean")
  model = DualTower(vit, ClipConfig(embed_dim=8, text_mode="cached", similarity=similarity))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32),
           "text_emb": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32),
           "text_id": jnp.arange(8), "study_id": jnp.arange(8)}
  params = model.init(jax.random.key(0), batch["image"], {"text_emb": batch["text_emb"]})["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
  return model, params, batch


@pytest.mark.parametrize("similarity,start", [("paper", -0.01), ("standard", MAX_LOG_SCALE + 0.1)])
def test_logit_scale_is_clamped_as_a_parameter_and_keeps_learning(similarity, start):
  model, params, batch = _dual_tower(similarity)
  params = {**params, "logit_scale": jnp.asarray(start, jnp.float32)}
  tx, schedule = optim.build(params, lr=1e-2, total_steps=10, warmup_steps=0)
  step = clip_step.make_train_step(model, tx, schedule, multi_positive=False)
  # Out of range, the loss still depends on the image features and on the scale itself (an
  # in-forward clip made both gradients exactly 0: paper mode below 0 zeroed every logit).
  loss_fn = clip_step.make_loss_fn(model, multi_positive=False)
  grads = jax.grad(lambda p: loss_fn(p, {}, batch, jax.random.key(0))[0])(params)
  assert float(jnp.abs(grads["visual_projection"]["kernel"]).max()) > 1e-6
  assert float(jnp.abs(grads["logit_scale"])) > 1e-6
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(1)))
  scales = []
  for _ in range(3):
    state, metrics = step(state, {}, batch)
    scales.append(float(state.params["logit_scale"]))
  assert all(0.0 <= s <= MAX_LOG_SCALE + 1e-6 for s in scales), scales  # the parameter is clamped in place
  assert scales[0] == (0.0 if start < 0 else pytest.approx(MAX_LOG_SCALE))
  multiplier = math.exp(scales[-1]) if similarity == "standard" else scales[-1]
  assert float(metrics["temperature"]) == (pytest.approx(1 / multiplier, rel=1e-5) if multiplier else math.inf)
