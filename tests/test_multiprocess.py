"""2 processes x 4 CPU devices through the CLI equal 1 process x 8 devices: final params and
metrics.json, for the CLIP stage and a text stage (supervised, through the chain and its export)."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import data_fixtures as fx
import hf_tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return fx.prepared_learnable(tmp_path_factory.mktemp("mpdata"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
  return env


def run_cli(args: list[str], workdir: pathlib.Path, processes: int, devices_per_process: int) -> None:
  """`python -m cxrclip_jax.main ARGS --workdir=W` as `processes` cooperating processes."""
  cmd = [sys.executable, "-m", "cxrclip_jax.main", *args, f"--workdir={workdir}"]
  if processes == 1:
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(devices_per_process), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)]
  else:
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(cmd + ["--distributed=true"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env(devices_per_process, JAX_COORDINATOR_ADDRESS=coordinator,
                                                  JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i)))
             for i in range(processes)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} of {processes} failed:\n{out[-4000:]}"


def final_params(checkpoints: pathlib.Path) -> dict[str, np.ndarray]:
  """The trainable params of the latest checkpoint, as flat numpy (no mesh needed)."""
  import orbax.checkpoint as ocp
  step = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  path = checkpoints / str(step) / "state"
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata.tree
    args = __import__("jax").tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    state = ckptr.restore(path, restore_args=args)
  from cxrclip_jax.export import keymap
  return {k: np.asarray(v) for k, v in keymap.flatten(state["params"]).items()}


def _numbers(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _numbers(v, f"{prefix}/{k}")
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield prefix, float(tree)


def assert_same_run(one: pathlib.Path, two: pathlib.Path, checkpoints: str, tol: float = 1e-5):
  a, b = final_params(one / checkpoints), final_params(two / checkpoints)
  assert a.keys() == b.keys() and a
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  print(f"{checkpoints}: max |param difference| 1 process vs 2 = {worst:.2e}")
  assert worst <= tol
  ma, mb = dict(_numbers(json.loads((one / "metrics.json").read_text()))), \
      dict(_numbers(json.loads((two / "metrics.json").read_text())))
  assert ma.keys() == mb.keys() and ma
  for k in ma:
    assert mb[k] == pytest.approx(ma[k], abs=tol, rel=tol, nan_ok=True), k


@pytest.mark.slow
def test_clip_two_processes_equal_one(dataset, tmp_path, asset):
  llm = hf_tiny.model_dir_with_tokenizer("mistral", tmp_path / "llm", asset)
  args = ["--config=configs/llm2clip.py:tiny", f"--config.data.dirs={dataset}", f"--config.text.model_dir={llm}",
          "--config.train.steps=4", "--config.train.checkpoint_every=2"]
  run_cli(args, tmp_path / "one", processes=1, devices_per_process=8)
  run_cli(args, tmp_path / "two", processes=2, devices_per_process=4)
  assert_same_run(tmp_path / "one", tmp_path / "two", "checkpoints")


@pytest.mark.slow
def test_text_chain_two_processes_equal_one(dataset, tmp_path, asset):
  llm = hf_tiny.model_dir_with_tokenizer("llama", tmp_path / "llm", asset)
  # fsdp=2 spans the two processes' devices: params are sharded across hosts, gathered for export.
  args = ["--config=configs/llm2vec4cxr.py:tiny", f"--config.data.dirs={dataset}", f"--config.model_dir={llm}",
          "--config.stages=supervised", "--config.mesh.data=4", "--config.mesh.fsdp=2",
          "--config.data.eval_max_queries=4"]
  run_cli(args, tmp_path / "one", processes=1, devices_per_process=8)
  run_cli(args, tmp_path / "two", processes=2, devices_per_process=4)
  assert_same_run(tmp_path / "one" / "supervised", tmp_path / "two" / "supervised", "checkpoints")
  from safetensors.numpy import load_file
  a, b = (load_file(tmp_path / w / "export" / "model.safetensors") for w in ("one", "two"))
  assert a.keys() == b.keys()
  assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) <= 1e-5
