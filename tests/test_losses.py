"""Losses vs straightforward numpy references."""
import jax.numpy as jnp
import numpy as np
import pytest

from cxrclip_jax import losses


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_infonce(logits, pos, eps=0.0):
  total = 0.0
  for lg, p in ((logits, pos), (logits.T, pos.T)):
    for i in range(len(lg)):
      t = p[i] / p[i].sum()
      t = (1 - eps) * t + eps / len(lg)
      total += -(t * np_log_softmax(lg[i])).sum() / len(lg)
  return total / 2


def _logits(b=6, seed=0):
  return np.random.default_rng(seed).normal(scale=3, size=(b, b)).astype(np.float32)


def test_infonce_is_clip_cross_entropy_on_the_diagonal():
  lg = _logits()
  expected = 0.5 * (-np.mean(np.diag(np_log_softmax(lg))) - np.mean(np.diag(np_log_softmax(lg.T))))
  np.testing.assert_allclose(losses.infonce(jnp.asarray(lg)), expected, rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_multi_positive_infonce(eps):
  lg = _logits()
  text_ids = np.array([0, 1, 0, 2, 3, 1])
  study_ids = np.array([10, 11, 12, 13, 13, 14])
  pos = np.asarray(losses.positives_from_ids(jnp.asarray(text_ids), jnp.asarray(study_ids)))
  expected_pos = (text_ids[:, None] == text_ids[None]) | (study_ids[:, None] == study_ids[None])
  np.testing.assert_array_equal(pos, expected_pos)
  got = losses.infonce(jnp.asarray(lg), jnp.asarray(pos), label_smoothing=eps)
  np.testing.assert_allclose(got, np_infonce(lg, expected_pos, eps), rtol=1e-5)


def test_siglip_loss():
  lg = _logits()
  z = 2 * np.eye(6) - 1
  expected = np.log1p(np.exp(-z * lg)).sum() / 6
  np.testing.assert_allclose(losses.siglip_loss(jnp.asarray(lg)), expected, rtol=1e-5)


def test_hard_negative_infonce_matches_llm2vec_formula():
  rng = np.random.default_rng(1)
  q, p, n = (rng.normal(size=(4, 8)).astype(np.float32) for _ in range(3))
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  scores = norm(q) @ norm(np.concatenate([p, n])).T * 20.0
  expected = -np.mean(np_log_softmax(scores)[np.arange(4), np.arange(4)])
  np.testing.assert_allclose(losses.hard_negative_infonce(jnp.asarray(q), jnp.asarray(p), jnp.asarray(n)),
                             expected, rtol=1e-5)


def test_mntp_loss_predicts_from_previous_position():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  labels = np.full((2, 5), -100)
  labels[0, 2], labels[1, 4] = 3, 6
  lp = np_log_softmax(logits)
  expected = -(lp[0, 1, 3] + lp[1, 3, 6]) / 2
  loss, count = losses.mntp_loss(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert int(count) == 2
