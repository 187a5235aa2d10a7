"""The LLM2VEC4CXR stages on the tiny config: the chain runs, merges and exports; each stage's step
is mesh-invariant and resumes exactly; the export loads in transformers and llm2vec."""
import json
import pathlib
import subprocess

import jax
import numpy as np
import pytest
import transformers

import data_fixtures as fx
import hf_tiny
from configs import llm2vec4cxr
from cxrclip_jax import sharding, tasks
from cxrclip_jax.export import hf
from cxrclip_jax.tasks import llm2vec4cxr as chain
from cxrclip_jax.train import loop
from data_pipelines import prepare

REF_PYTHON = pathlib.Path(__file__).resolve().parents[1] / ".venv-llm2vec" / "bin" / "python"
REF_SCRIPT = pathlib.Path(__file__).resolve().parent / "reference" / "llm2vec_ref.py"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("textdata")
  src = fx.learnable_manifest(root / "src", n=48)
  prepare.run(prepare.Options("manifest", str(root / "prepared"), str(src), image_size=32, shard_size=16))
  return str(root / "prepared")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, asset):
  return hf_tiny.model_dir_with_tokenizer("llama", tmp_path_factory.mktemp("llm") / "m", asset)


def tiny_config(dataset, llm_dir, **overrides):
  c = llm2vec4cxr.get_config("tiny")
  c.data.dirs, c.model_dir = dataset, str(llm_dir)
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture(scope="module")
def chained(dataset, llm_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("chain")
  results = tasks.run(tiny_config(dataset, llm_dir), workdir)
  return workdir, results


@pytest.mark.slow
def test_chain_runs_every_stage_and_exports(chained):
  workdir, results = chained
  assert list(results) == ["mntp", "simcse", "supervised"]
  for stage in results:
    assert (workdir / stage / "export" / "model.safetensors").is_file()
    log = [json.loads(l) for l in (workdir / stage / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert "text_tasks" in results[stage]
  assert "masked_accuracy" in json.loads((workdir / "mntp" / "train_log.jsonl").read_text().splitlines()[0])
  side = json.loads((workdir / "export" / "llm2vec_config.json").read_text())
  assert side == {"pooling_mode": "mean", "max_length": 32, "doc_max_length": 400, "skip_instruction": True}
  assert json.loads((workdir / "export" / "encoder_config.json").read_text())["bidirectional"] is True
  model, info = transformers.AutoModel.from_pretrained(workdir / "export", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert type(model).__name__ == "LlamaModel"


@pytest.mark.slow
def test_each_stage_starts_from_the_previous_merged_weights(chained, dataset, llm_dir):
  """simcse's input is mntp's export (LoRA merged, dense), and its fresh LoRA starts at zero
  effect: its initial encoder equals the mntp export's."""
  workdir, _ = chained
  config = chain.stage_config(tiny_config(dataset, llm_dir), "simcse", workdir / "mntp" / "export", "none")
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  task = tasks.module("simcse").build(config, workdir / "probe", mesh, train=False)
  run = loop.setup(config, workdir / "probe", task, mesh)
  _, exported, _ = hf.load_text_encoder(workdir / "mntp" / "export")
  fresh = jax.tree.map(np.asarray, run.params())
  np.testing.assert_array_equal(fresh["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"],
                                exported["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"])
  assert float(np.abs(fresh["model"]["layers_0"]["self_attn"]["q_proj"]["lora"]["b"]).max()) == 0.0
  # The mntp export differs from the base LLM: its LoRA was trained and merged.
  _, base, _ = hf.load_text_encoder(llm_dir)
  assert np.abs(exported["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
                - base["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]).max() > 1e-6


@pytest.mark.parametrize("chain_mode,mntp_mode", [("full", "lora"), ("lora", "full")])
def test_a_stage_finetune_overrides_the_chains(dataset, llm_dir, tmp_path, chain_mode, mntp_mode):
  config = tiny_config(dataset, llm_dir, finetune=chain_mode, **{"mntp.finetune": mntp_mode})
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  has_lora = lambda stage: any("lora" in "/".join(map(str, path)) for path, _ in jax.tree_util.tree_leaves_with_path(
      jax.eval_shape(tasks.module(stage).build(config, tmp_path / stage, mesh, train=False).init_fn)))
  assert has_lora("mntp") == ((mntp_mode or chain_mode) == "lora")
  assert has_lora("supervised") == (chain_mode == "lora")  # the chain's: supervised sets none


def _steps(config, workdir, devices, n=2):
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  task = tasks.module(config.task).build(config, workdir, mesh)
  run = loop.setup(config, workdir, task, mesh)
  it, logs, state = task.train_data(0), [], run.state
  with sharding.activate(mesh):
    for _ in range(n):
      state, m = run.train_step(state, run.frozen, task.device_batch(next(it)))
      logs.append({k: float(v) for k, v in jax.device_get(m).items()})
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params), logs


@pytest.mark.slow
@pytest.mark.parametrize("stage", chain.STAGES)
def test_stage_steps_on_8_devices_equal_1_device(stage, dataset, llm_dir, tmp_path):
  # A small lr: Adam's first updates are ~lr x sign(g), so float noise on near-zero grads (fresh
  # LoRA branches) would otherwise show up at ~lr.
  lr = {f"{stage}.lr": 1e-4}
  base = tiny_config(dataset, llm_dir, **lr)
  one, log1 = _steps(chain.stage_config(base, stage, llm_dir, "none"), tmp_path / "one", jax.devices()[:1])
  eight_config = tiny_config(dataset, llm_dir, **lr, **{"mesh.data": 4, "mesh.fsdp": 2})
  eight, log8 = _steps(chain.stage_config(eight_config, stage, llm_dir, "none"), tmp_path / "eight", jax.devices())
  assert log1[1]["lr"] > 0
  for a, b in zip(log1, log8):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  for (path, a), b in zip(jax.tree.leaves_with_path(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_export_matches_llm2vec(chained, tmp_path):
  """llm2vec 0.2.3 (its own venv) on W/export equals our embed CLI, mean and weighted_mean."""
  from cxrclip_jax import embed
  workdir, _ = chained
  texts = ["Small R pl eff.", "No acute cardiopulmonary process. Heart size nl.", "ETT 4 cm above the carina."]
  jobs = [dict(model_dir=str(workdir / "export"), pooling=p, bidirectional=True, instruction="", texts=texts,
               batch_size=2, out=str(tmp_path / f"{p}.npy")) for p in ("mean", "weighted_mean")]
  (tmp_path / "jobs.json").write_text(json.dumps(jobs))
  proc = subprocess.run([str(REF_PYTHON), str(REF_SCRIPT), str(tmp_path / "jobs.json")], capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  for p in ("mean", "weighted_mean"):
    ours = embed.embed_file(str(workdir / "export"), str(tmp_path / "t.jsonl"), str(tmp_path / "o.npy"),
                            pooling=p, bidirectional=True)
    assert np.abs(ours - np.load(tmp_path / f"{p}.npy")).max() < 1e-4, p


@pytest.mark.slow
def test_stage_interrupted_and_resumed_equals_uninterrupted(dataset, llm_dir, tmp_path, monkeypatch):
  """A stage killed after step 3 resumes from its step-2 checkpoint and ends where an uninterrupted
  run ends: batches are a function of the step (every batch maker's resume is checked in
  test_text_batches), the dropout rng lives in the state. Supervised: epochs of the task sampler."""
  stage = "supervised"
  from cxrclip_jax.tasks import text_stage
  config = chain.stage_config(tiny_config(dataset, llm_dir, **{f"{stage}.steps": 4, "data.eval_max_queries": 2}),
                              stage, llm_dir, "none")
  tasks.run(config, tmp_path / "straight")
  real, calls = text_stage.TextStage.device_batch, {"n": 0}

  def preempted_after_three(self, local):
    calls["n"] += 1
    if calls["n"] > 3:
      raise KeyboardInterrupt("simulated preemption")
    return real(self, local)

  monkeypatch.setattr(text_stage.TextStage, "device_batch", preempted_after_three)
  with pytest.raises(KeyboardInterrupt):
    tasks.run(config, tmp_path / "resumed")
  monkeypatch.setattr(text_stage.TextStage, "device_batch", real)
  tasks.run(config, tmp_path / "resumed")
  log = [json.loads(l) for l in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log][-2:] == [3, 4]  # the resumed run redid step 3 and went on
  (expected, step_a), (got, step_b) = tasks.load(tmp_path / "straight"), tasks.load(tmp_path / "resumed")
  assert step_a == step_b == 4
  for (path, a), b in zip(jax.tree.leaves_with_path(expected.state.params), jax.tree.leaves(got.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=jax.tree_util.keystr(path))
