"""The CLIP trainer on the tiny config: mesh-invariant steps, exact resume, falling loss, cache keys."""
import json
import shutil

import jax
import numpy as np
import pytest

import data_fixtures as fx
import hf_tiny
from configs import llm2clip
from cxrclip_jax import checkpoint, optim, sharding, tasks
from cxrclip_jax.tasks import clip, clip_setup, text_cache
from cxrclip_jax.train import loop
from data_pipelines import prepare


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("clipdata")
  src = fx.learnable_manifest(root / "src", n=48)  # images show their report's finding
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


def _setup(config, workdir, devices=None):
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  return loop.setup(config, workdir, clip.build(config, workdir, mesh), mesh)


def _after_steps(config, workdir, devices, n=2):
  """(params, per-step metrics) after n steps of the trainer's own step on the given devices."""
  run = _setup(config, workdir, devices)
  it = run.task.train_data(0)
  logs = []
  with sharding.activate(run.mesh):
    state = run.state
    for _ in range(n):
      state, m = run.train_step(state, run.frozen, run.task.device_batch(next(it)))
      logs.append({k: float(v) for k, v in jax.device_get(m).items()})
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params), logs


@pytest.mark.parametrize("mode,mesh", [("cached", dict(data=4, fsdp=2, tensor=1)),
                                       ("lora", dict(data=2, fsdp=2, tensor=2))], ids=["cached-d4f2", "lora-d2f2t2"])
def test_steps_on_8_devices_equal_1_device(dataset, llm_dir, tmp_path, mode, mesh):
  common = {"text.mode": mode, "optim.warmup_steps": 0, "optim.lr": 2e-3}  # the first update is not lr 0
  start = _after_steps(tiny_config(dataset, llm_dir, **common, **{"mesh.data": 1}), tmp_path / "s", jax.devices()[:1], 0)[0]
  one, log_one = _after_steps(tiny_config(dataset, llm_dir, **common, **{"mesh.data": 1}), tmp_path / "one",
                              jax.devices()[:1])
  config = tiny_config(dataset, llm_dir, **common, **{f"mesh.{k}": v for k, v in mesh.items()})
  eight, log_eight = _after_steps(config, tmp_path / "eight", jax.devices())
  flat_one, flat_eight = jax.tree.leaves_with_path(one), jax.tree.leaves(eight)
  assert len(flat_one) == len(flat_eight)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(start)))
  assert moved > 1e-3  # two real updates, not lr 0
  if mode == "lora":  # only LoRA branches, adapters, the vision tower and the scale train
    text_paths = [jax.tree_util.keystr(p) for p, _ in flat_one if "text_encoder" in jax.tree_util.keystr(p)]
    assert text_paths and all("lora" in p for p in text_paths)
  for a, b in zip(log_one, log_eight):
    for key in ("loss", "grad_norm", "lr"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  for (path, a), b in zip(flat_one, flat_eight):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def _final_params(config, workdir):
  run, step = tasks.load(workdir)
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), run.state.params), step


def test_interrupted_and_resumed_equals_uninterrupted(dataset, llm_dir, tmp_path, monkeypatch):
  config = tiny_config(dataset, llm_dir, **{"train.steps": 6, "train.checkpoint_every": 3, "data.workers": 2})
  tasks.run(config, tmp_path / "straight")
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
    tasks.run(config, tmp_path / "resumed")
  monkeypatch.setattr(clip_setup, "device_batch", real)
  tasks.run(config, tmp_path / "resumed")  # resumes from step 3
  got, step = _final_params(config, tmp_path / "resumed")
  assert step == 6
  for (path, a), b in zip(jax.tree.leaves_with_path(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_loss_falls_and_metrics_are_written(dataset, llm_dir, tmp_path):
  config = tiny_config(dataset, llm_dir, **{"train.steps": 30, "train.log_every": 5, "optim.lr": 3e-3,
                                            "train.checkpoint_every": 0})
  results = tasks.run(config, tmp_path)
  log = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
  assert np.mean([r["loss"] for r in log[-2:]]) < 0.7 * log[0]["loss"]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  test = metrics["test"]
  assert test["n"] == results["test"]["n"] > 0
  for task in ("i2t", "t2i", "i2t_clinical", "t2i_clinical"):
    assert set(test[task]) >= {"R@1", "R@5", "R@10", "mean_rank", "median_rank"}
  assert set(test["chance"]) == {"R@1", "R@5", "R@10"} and test["zeroshot_auroc"]
  # 30 steps learn the findings the images show: retrieval well above chance both ways.
  for task in ("i2t", "t2i", "i2t_clinical", "t2i_clinical"):
    assert test[task]["R@1"] > 2 * test[task]["chance"]["R@1"], (task, test[task])


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


def _log(workdir):
  return [json.loads(l) for l in (workdir / "train_log.jsonl").read_text().splitlines()]


def test_accumulation_logs_the_schedule_in_updates(dataset, llm_dir, tmp_path):
  """With accum_steps=2 the run takes as many optimizer updates, at the same rates, as with 1."""
  base = {"train.steps": 6, "train.log_every": 1, "optim.warmup_steps": 3, "train.checkpoint_every": 0}
  tasks.run(tiny_config(dataset, llm_dir, **base), tmp_path / "k1")
  tasks.run(tiny_config(dataset, llm_dir, **base, **{"optim.accum_steps": 2}), tmp_path / "k2")
  lr1, lr2 = [r["lr"] for r in _log(tmp_path / "k1")], [r["lr"] for r in _log(tmp_path / "k2")]
  expected = optim.schedule(2e-3, 6, 3)
  np.testing.assert_allclose(lr1, [float(expected(s)) for s in range(6)], rtol=1e-6)  # update s used schedule(s-1)
  np.testing.assert_allclose(lr2, lr1, rtol=1e-6)
  assert lr1[0] == 0 and lr1[3] == pytest.approx(2e-3)


def _poison_step(monkeypatch, steps):
  """NaN images in the batches of the given (1-based) steps."""
  real, calls = clip_setup.device_batch, {"n": 0}
  def poisoned(batch, *args, **kw):
    calls["n"] += 1
    if calls["n"] in steps:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return real(batch, *args, **kw)
  monkeypatch.setattr(clip_setup, "device_batch", poisoned)


def test_non_finite_step_stops_the_run_naming_it(dataset, llm_dir, tmp_path, monkeypatch):
  """A NaN entering between log steps stops the run before the next save, naming its step."""
  config = tiny_config(dataset, llm_dir, **{"train.steps": 6, "train.log_every": 100, "train.checkpoint_every": 2})
  _poison_step(monkeypatch, {3})  # step 3: not a log step; step 4 saves
  with pytest.raises(tasks.TrainingError, match=r"at step 3; the last checkpoint \(step 2\) is intact"):
    tasks.run(config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == [2]


def test_non_finite_step_is_skipped_and_counted(dataset, llm_dir, tmp_path, monkeypatch):
  common = {"train.steps": 4, "train.log_every": 1, "train.checkpoint_every": 0, "train.eval_every": 0,
            "data.eval_splits": ""}
  ref = _after_steps(tiny_config(dataset, llm_dir, **common), tmp_path / "ref", jax.devices()[:1], 2)[0]
  _poison_step(monkeypatch, {3, 4})
  tasks.run(tiny_config(dataset, llm_dir, **common, **{"train.nonfinite": "skip"}), tmp_path / "skip")
  log = [json.loads(line) for line in (tmp_path / "skip" / "train_log.jsonl").read_text().splitlines()]
  assert [m["finite"] for m in log] == [1, 1, 0, 0] and [m["skipped_steps"] for m in log] == [0, 0, 1, 2]
  # Steps 3 and 4 changed nothing: the params are those after step 2.
  params = tasks.load(tmp_path / "skip", devices=jax.devices()[:1])[0].state.params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-6), params, ref)
  _poison_step(monkeypatch, {2, 3})
  with pytest.raises(tasks.TrainingError, match=r"2 non-finite steps in a row \(train.max_skips=1\) at step 3"):
    tasks.run(tiny_config(dataset, llm_dir, **common, **{"train.nonfinite": "skip", "train.max_skips": 1}),
              tmp_path / "stop")


@pytest.mark.parametrize("overrides", [{"clip.loss": "siglip", "optim.lr": 3e-3},
                                       {"clip.similarity": "paper", "optim.lr": 1e-2},
                                       {"clip.adapter": "mlp", "optim.lr": 3e-3}], ids=["siglip", "paper", "mlp-adapter"])
def test_other_loss_similarity_and_adapter_paths_train(dataset, llm_dir, tmp_path, overrides):
  config = tiny_config(dataset, llm_dir, **{"train.steps": 30, "train.log_every": 5, "train.checkpoint_every": 0,
                                            **overrides})
  results = tasks.run(config, tmp_path)
  log = _log(tmp_path)
  assert all(np.isfinite(r["loss"]) for r in log)
  assert np.mean([r["loss"] for r in log[-2:]]) < 0.9 * log[0]["loss"], [r["loss"] for r in log]
  run = _setup(config, tmp_path / "again")
  if overrides.get("clip.loss") == "siglip":
    assert "logit_bias" in run.state.params
  if overrides.get("clip.adapter") == "mlp":
    assert {"proj_in", "blocks_0_fc1", "blocks_0_fc2", "norm_out"} <= set(run.state.params["text_adapter"])
  for task in ("i2t_clinical", "t2i_clinical"):
    assert results["test"][task]["R@1"] > 2 * results["test"][task]["chance"]["R@1"], results["test"][task]


def test_latent_attention_sizes_come_from_config_and_checkpoint(dataset, llm_dir, tmp_path):
  from cxrclip_jax.export import hf
  module, params, _ = hf.load_text_encoder(llm_dir)
  enc = hf.TextEncoder(module.config, pooling="latent_attention", num_latents=16, latent_heads=4)
  full = jax.tree.map(np.asarray, sharding.nn.unbox(
      enc.init(jax.random.key(0), *hf._dummy_text_inputs())["params"]))
  full["model"] = params["model"]
  src = hf.save_text_encoder(tmp_path / "latent16", module.config, full, tokenizer_dir=llm_dir,
                             pooling="latent_attention", latent_heads=4)
  lora = {"text.mode": "lora", "text.model_dir": str(src), "text.pooling": "latent_attention"}
  run = _setup(tiny_config(dataset, llm_dir, **lora), tmp_path / "w")  # sizes from the checkpoint
  assert run.state.params["text_encoder"]["latent_attn"]["latents"].shape == (16, module.config.hidden_size)
  assert run.task.model.clip.latent_heads == 4
  for key, value, found in (("num_latents", 32, 16), ("latent_heads", 8, 4)):
    with pytest.raises(ValueError, match=f"{key}={value} but .* holds {found}"):
      _setup(tiny_config(dataset, llm_dir, **lora, **{f"text.{key}": value}), tmp_path / key)
