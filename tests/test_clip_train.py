"""The CLIP trainer on the tiny config: mesh-invariant steps, exact resume, falling loss, cache keys."""
import json
import shutil

import jax
import numpy as np
import pytest

import data_fixtures as fx
import hf_tiny
from configs import llm2clip
from cxrclip_jax.train import clip_setup, clip_trainer, text_cache
from data_pipelines import prepare


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("clipdata")
  src = fx.manifest(root / "src", n=44)
  prepare.run(prepare.Options("manifest", str(root / "prepared"), str(src), image_size=32, shard_size=16))
  return str(root / "prepared")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, asset):
  return hf_tiny.model_dir_with_tokenizer("mistral", tmp_path_factory.mktemp("llm") / "m", asset)


def tiny_config(dataset, llm_dir, **overrides):
  c = llm2clip.get_config("tiny")
  c.data.dirs = dataset
  c.text.model_dir = str(llm_dir)
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _params_after_one_step(config, workdir, devices):
  run = clip_trainer.setup(config, workdir, devices=devices)
  batch = next(iter(run.train_data))
  with clip_trainer.sharding.activate(run.mesh):
    state, _ = run.train_step(run.state, run.frozen, clip_setup.device_batch(batch, run.train_table, run.mesh))
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)


@pytest.mark.parametrize("mode,mesh", [("cached", dict(data=4, fsdp=2, tensor=1)),
                                       ("lora", dict(data=2, fsdp=2, tensor=2))], ids=["cached-d4f2", "lora-d2f2t2"])
def test_step_on_8_devices_equals_1_device(dataset, llm_dir, tmp_path, mode, mesh):
  one = _params_after_one_step(tiny_config(dataset, llm_dir, **{"text.mode": mode, "mesh.data": 1}),
                               tmp_path / "one", jax.devices()[:1])
  config = tiny_config(dataset, llm_dir, **{"text.mode": mode, **{f"mesh.{k}": v for k, v in mesh.items()}})
  eight = _params_after_one_step(config, tmp_path / "eight", jax.devices())
  flat_one, flat_eight = jax.tree.leaves_with_path(one), jax.tree.leaves(eight)
  assert len(flat_one) == len(flat_eight)
  if mode == "lora":  # only LoRA branches, adapters, the vision tower and the scale train
    assert all("lora" in jax.tree_util.keystr(p) for p, _ in flat_one if "text_encoder" in jax.tree_util.keystr(p))
  for (path, a), b in zip(flat_one, flat_eight):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def _final_params(config, workdir):
  run = clip_trainer.setup(config, workdir)
  clip_trainer.restore(run, run.checkpointer.latest_step())
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), run.state.params), run.checkpointer.latest_step()


def test_interrupted_and_resumed_equals_uninterrupted(dataset, llm_dir, tmp_path, monkeypatch):
  config = tiny_config(dataset, llm_dir, **{"train.steps": 6, "train.checkpoint_every": 3, "data.workers": 2})
  clip_trainer.train_and_evaluate(config, tmp_path / "straight")
  expected, step = _final_params(config, tmp_path / "straight")
  assert step == 6

  real = clip_setup.device_batch
  calls = {"n": 0}
  def crash_after_four(*args, **kw):
    calls["n"] += 1
    if calls["n"] > 4:
      raise KeyboardInterrupt("simulated preemption")
    return real(*args, **kw)
  monkeypatch.setattr(clip_setup, "device_batch", crash_after_four)
  with pytest.raises(KeyboardInterrupt):
    clip_trainer.train_and_evaluate(config, tmp_path / "resumed")
  monkeypatch.setattr(clip_setup, "device_batch", real)
  clip_trainer.train_and_evaluate(config, tmp_path / "resumed")  # resumes from step 3
  got, step = _final_params(config, tmp_path / "resumed")
  assert step == 6
  for (path, a), b in zip(jax.tree.leaves_with_path(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_loss_falls_and_metrics_are_written(dataset, llm_dir, tmp_path):
  config = tiny_config(dataset, llm_dir, **{"train.steps": 30, "train.log_every": 5, "optim.lr": 3e-3,
                                            "train.checkpoint_every": 0})
  results = clip_trainer.train_and_evaluate(config, tmp_path)
  log = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
  assert np.mean([r["loss"] for r in log[-2:]]) < 0.7 * log[0]["loss"]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  test = metrics["test"]
  assert test["n"] == results["test"]["n"] > 0
  for task in ("i2t", "t2i", "i2t_clinical", "t2i_clinical"):
    assert set(test[task]) >= {"R@1", "R@5", "R@10", "mean_rank", "median_rank"}
  assert set(test["chance"]) == {"R@1", "R@5", "R@10"} and test["zeroshot_auroc"]


def test_cache_key_changes_with_every_input(llm_dir, tmp_path):
  model = tmp_path / "m"
  shutil.copytree(llm_dir, model)
  args = dict(model_dir=model, texts=["a report", "another"], pooling="mean", bidirectional=True, instruction="",
              max_length=64, dtype="float32")
  base = text_cache.cache_key(**args)
  assert text_cache.cache_key(**args) == base
  for change in [dict(texts=["a report", "another."]), dict(pooling="weighted_mean"), dict(bidirectional=False),
                 dict(instruction="Embed:"), dict(max_length=32), dict(dtype="bfloat16")]:
    assert text_cache.cache_key(**{**args, **change}) != base, change
  weights = model / "model.safetensors"
  data = bytearray(weights.read_bytes())
  data[-1] ^= 1  # one bit of one weight
  weights.write_bytes(bytes(data))
  assert text_cache.cache_key(**args) != base
  data[-1] ^= 1
  weights.write_bytes(bytes(data))
  assert text_cache.cache_key(**args) == base
  tok = model / "tokenizer.json"
  tok.write_text(tok.read_text().replace('"<|im_end|>"', '"<|im_end|> "', 1))
  assert text_cache.cache_key(**args) != base
