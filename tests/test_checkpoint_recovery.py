"""Checkpoints that survive anything: kill -9 while Orbax writes, then relaunch through the CLI
(bitwise equal to the uninterrupted run), and a restore onto a different mesh."""
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import data_fixtures as fx
import hf_tiny
from configs import llm2clip
from cxrclip_jax import sharding
from cxrclip_jax.tasks import clip
from cxrclip_jax.train import loop
from test_multiprocess import final_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
KILLER = pathlib.Path(__file__).resolve().parent / "reference" / "kill_during_save.py"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return fx.prepared_learnable(tmp_path_factory.mktemp("ckptdata"))


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, asset):
  return hf_tiny.model_dir_with_tokenizer("mistral", tmp_path_factory.mktemp("llm") / "m", asset)


def _cli(script, args, workdir, **env):
  env = {**{k: v for k, v in os.environ.items() if not k.startswith("XLA_")},
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu", **env}
  return subprocess.run([sys.executable, *script, *args, f"--workdir={workdir}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_kill_9_during_a_save_resumes_from_the_last_complete_step(dataset, llm_dir, tmp_path):
  args = ["--config=configs/llm2clip.py:tiny", f"--config.data.dirs={dataset}", f"--config.text.model_dir={llm_dir}",
          "--config.train.steps=6", "--config.train.checkpoint_every=2", "--config.data.eval_splits="]
  straight = _cli(["-m", "cxrclip_jax.main"], args, tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-3000:]

  killed = _cli([str(KILLER)], args, tmp_path / "killed", KILL_AT_STEP="4")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  ckpts = tmp_path / "killed" / "checkpoints"
  assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2"]
  assert any(p.name.startswith("4.") for p in ckpts.iterdir()), "the partial save of step 4 should be on disk"

  resumed = _cli(["-m", "cxrclip_jax.main"], args, tmp_path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 2" in resumed.stdout
  a, b = final_params(tmp_path / "straight" / "checkpoints"), final_params(ckpts)
  assert a.keys() == b.keys() and a
  for k in a:
    assert np.array_equal(a[k], b[k]), k  # bitwise: the data iterator came back with the state


def _restored(config, workdir, mesh_shape, devices):
  config = config.copy_and_resolve_references()
  config.mesh.update(mesh_shape)
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  run = loop.setup(config, workdir, clip.build(config, workdir, mesh, train=False), mesh)
  loop.restore(run, run.checkpointer.latest_step())
  return run


def test_restore_onto_another_mesh(dataset, llm_dir, tmp_path):
  """(data=4) -> (data=2, fsdp=2) -> 1 device: the same values, laid out by the new mesh."""
  config = llm2clip.get_config("tiny")
  config.unlock()
  config.data.dirs, config.text.model_dir = dataset, str(llm_dir)
  config.text.mode = "lora"  # a text tower in the train state: big enough matrices to shard
  config.train.update(steps=2, checkpoint_every=2)
  config.data.eval_splits = ""
  config.mesh.update(data=4, fsdp=1)
  mesh = sharding.make_mesh(dict(config.mesh), jax.devices()[:4])
  loop.train_and_evaluate(config, tmp_path, clip.build(config, tmp_path, mesh), mesh)
  saved = final_params(tmp_path / "checkpoints")

  fsdp = _restored(config, tmp_path, dict(data=2, fsdp=2), jax.devices()[:4])
  one = _restored(config, tmp_path, dict(data=1, fsdp=1), jax.devices()[:1])
  from cxrclip_jax.export import keymap
  for run, devices in ((fsdp, 4), (one, 1)):
    params = keymap.flatten(run.state.params)
    assert params.keys() == saved.keys()
    for k, v in params.items():
      assert len(v.sharding.device_set) == devices
      np.testing.assert_array_equal(np.asarray(jax.device_get(v)), saved[k], err_msg=k)
  sharded = [k for k, v in keymap.flatten(fsdp.state.params).items() if "fsdp" in str(v.sharding.spec)]
  assert sharded, "with fsdp=2 some params should be sharded over fsdp"
