"""launch/tpu_pod.sh and launch/slurm_gpu.sbatch: their --dry-run output, and that it is what runs.

gcloud, scontrol and srun are stubs put first on PATH; nothing leaves this machine.
"""
import json
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm_gpu.sbatch"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _stub(bindir: pathlib.Path, name: str, body: str) -> None:
  path = bindir / name
  path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def env(tmp_path):
  """A clean environment whose PATH starts with a stub directory (tmp_path/bin)."""
  (tmp_path / "bin").mkdir()
  return {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
          "LC_ALL": "C"}


def _run(script, args, env, **extra_env):
  return subprocess.run([BASH, str(script), *args], env={**env, **extra_env}, capture_output=True,
                        text=True, timeout=30, cwd=ROOT)


def _ok(result) -> list[str]:
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def test_syntax():
  for script in (TPU, SLURM):
    subprocess.run([BASH, "-n", str(script)], check=True)


# --- TPU ----------------------------------------------------------------------------------------

TPU_ARGS = ["--dry-run", "--accelerator-type=v5p-64", "my-pod", "us-east5-a", "/mnt/shared/run",
            "--config.data.dirs=/mnt/shared/data dir", "--config.train.epochs=3"]


def _remote(line: str) -> tuple[list[str], str]:
  """(the gcloud words, the --command's remote shell string) of an ssh line."""
  words = shlex.split(line)
  (command,) = [w for w in words if w.startswith("--command=")]
  return words, command[len("--command="):]


def test_tpu_dry_run(env):
  create, stage, scp, setup, train = _ok(_run(TPU, TPU_ARGS, env))
  assert shlex.split(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-pod", "--zone=us-east5-a",
                                 "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5"]
  assert stage.startswith("rm -rf ") and f"git -C {ROOT} archive" in stage
  words = shlex.split(scp)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
  assert words[6].endswith("/cxrclip_jax") and words[7] == "my-pod:." and "--worker=all" in words
  for line in (setup, train):
    words, _ = _remote(line)
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
    assert "--worker=all" in words and "--zone=us-east5-a" in words
  assert "make setup" in _remote(setup)[1] and "jax[tpu]==" in _remote(setup)[1]
  command = _remote(train)[1]
  assert r"--config.data.dirs=/mnt/shared/data\ dir" in command  # printf %q
  assert shlex.split(command) == [
      "cd", "cxrclip_jax", "&&", ".venv/bin/python", "-m", "cxrclip_jax.main", "--config=configs/llm2clip.py:mimic",
      "--workdir=/mnt/shared/run", "--distributed=true", "--config.data.dirs=/mnt/shared/data dir",
      "--config.train.epochs=3"]


def test_tpu_options_from_flags_and_env(env):
  lines = _ok(_run(TPU, ["--dry-run", "--no-create", "--no-setup", "--config=configs/llm2clip.py:base",
                         "--project=proj", "--workdir=/shared/w", "pod", "zone-a", "--", "--dry-run"],
                   env, REPO_URL="https://example.com/x y.git", REMOTE_DIR="code/cxr"))
  assert len(lines) == 2 and not any(" create " in l or " scp " in l for l in lines)
  words, clone = _remote(lines[0])
  assert "--project=proj" in words and "--worker=all" in words
  assert "git clone https://example.com/x\\ y.git code/cxr" in clone
  _, command = _remote(lines[1])
  assert shlex.split(command)[:2] == ["cd", "code/cxr"]
  assert shlex.split(command)[-4:] == ["--config=configs/llm2clip.py:base", "--workdir=/shared/w",
                                       "--distributed=true", "--dry-run"]  # after --: for main.py
  lines = _ok(_run(TPU, ["--dry-run", "p", "z", "/w"], env, TPU_POD_ACCELERATOR_TYPE="v4-32"))
  assert shlex.split(lines[0])[-2:] == ["--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]


@pytest.mark.parametrize("args", [["--dry-run", "pod", "zone"], ["--dry-run"], []])
def test_tpu_missing_argument(env, args):
  r = _run(TPU, args, env)
  assert r.returncode != 0 and r.stdout == ""
  assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("usage: ")


def test_tpu_refusals(env):
  for args in (["--dry-run", "--no-create", "p", "z", "gs://bucket/run"],  # pathlib would mangle it
               ["--dry-run", "p", "z", "/w"],  # creating needs an accelerator type
               ["--dry-run", "--no-create", "p", "z", "/w", "stray"]):
    r = _run(TPU, args, env)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, (args, r.stderr)


def test_tpu_runs_what_dry_run_prints(env, tmp_path):
  log = tmp_path / "gcloud.jsonl"
  _stub(tmp_path / "bin", "gcloud", f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  args = ["--accelerator-type=v6e-16", "pod", "z", "/w", "--config.x=a b'c"]
  dry = _ok(_run(TPU, ["--dry-run", *args], env, REPO_URL="git@host:r.git"))
  r = _run(TPU, args, env, REPO_URL="git@host:r.git")
  assert r.returncode == 0, r.stderr
  ran = [json.loads(l) for l in log.read_text().splitlines()]
  assert ran == [shlex.split(l)[1:] for l in dry]
  assert [l[2:] for l in r.stderr.splitlines()] == dry  # and echoes each as "+ command"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tpu_copy_stages_a_clean_checkout(env, tmp_path):
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True)
  shutil.copy(TPU, repo / "launch" / "tpu_pod.sh")
  (repo / ".gitignore").write_text(".venv/\n")
  (repo / "tracked.py").write_text("1\n")
  git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
  subprocess.run([*git, "init", "-q"], check=True, env=env)
  subprocess.run([*git, "add", "-A"], check=True, env=env)
  subprocess.run([*git, "commit", "-qm", "x"], check=True, env=env)
  (repo / "tracked.py").write_text("2\n")  # an uncommitted edit
  (repo / "new.py").write_text("new\n")  # untracked, not ignored
  (repo / ".venv").mkdir()
  (repo / ".venv" / "big").write_text("no\n")
  stage_line = _ok(_run(repo / "launch" / "tpu_pod.sh", ["--dry-run", "--no-create", "p", "z", "/w"], env))[0]
  subprocess.run([BASH, "-c", stage_line], check=True, env=env, capture_output=True)
  staged = tmp_path / "tpu_pod-p" / "cxrclip_jax"
  assert sorted(p.name for p in staged.iterdir()) == [".gitignore", "launch", "new.py", "tracked.py"]
  assert (staged / "tracked.py").read_text() == "2\n"
  assert subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, env=env).stdout == \
      " M tracked.py\n?? new.py\n"  # the checkout's own index is untouched


# --- SLURM --------------------------------------------------------------------------------------

@pytest.fixture
def slurm_env(env, tmp_path):
  """A fake allocation of two nodes; scontrol expands SLURM_JOB_NODELIST from STUB_HOSTS."""
  _stub(tmp_path / "bin", "scontrol",
        "assert sys.argv[1:3] == ['show', 'hostnames'] and sys.argv[3] == os.environ['SLURM_JOB_NODELIST']\n"
        "print('\\n'.join(os.environ['STUB_HOSTS'].split()))\n")
  return {**env, "SLURM_JOB_NODELIST": "gpu[17-18]", "STUB_HOSTS": "gpu17 gpu18", "SLURM_JOB_ID": "4100",
          "SLURM_SUBMIT_DIR": str(ROOT)}


def _tasks(lines):
  """{task: {var: value}} from the dry run's `# task N on HOST (local L): K=V ...` lines."""
  out = {}
  for l in lines:
    if l.startswith("# task "):
      head, vars_ = l.split(":", 1)
      out[int(head.split()[2])] = dict(kv.split("=", 1) for kv in vars_.split()) | {"host": head.split()[4]}
  return out


def _srun(lines) -> list[str]:
  (line,) = [l for l in lines if l.startswith("srun ")]
  return shlex.split(line)


MAIN = [".venv/bin/python", "-m", "cxrclip_jax.main", "--config=configs/llm2clip.py:mimic", "--workdir=/ckpt/run",
        "--distributed=true", "--config.data.dirs=/data/a b"]


def test_slurm_dry_run_per_gpu(slurm_env):
  lines = _ok(_run(SLURM, ["--dry-run", "/ckpt/run", "--config.data.dirs=/data/a b"], slurm_env))
  assert "export JAX_COORDINATOR_ADDRESS=gpu17:61444" in lines  # 61440 + 4100 % 4096
  assert f"cd {ROOT}" in lines
  words = _srun(lines)
  assert words[:5] == ["srun", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=16", "--ntasks-per-node=8"]
  i = words.index("-c")
  assert words[i - 1] == "bash" and words[i + 2] == "bash" and words[i + 3:] == MAIN
  tasks = _tasks(lines)
  assert sorted(tasks) == list(range(16))
  for t, v in tasks.items():
    assert v == {"JAX_PROCESS_ID": str(t), "JAX_NUM_PROCESSES": "16", "CUDA_VISIBLE_DEVICES": str(t % 8),
                 "JAX_LOCAL_DEVICE_IDS": "0", "host": "gpu17" if t < 8 else "gpu18"}


def test_slurm_dry_run_per_node(slurm_env):
  lines = _ok(_run(SLURM, ["--dry-run", "--procs-per=node", "/ckpt/run", "--config.data.dirs=/data/a b"],
                   slurm_env, JAX_COORDINATOR_PORT="5555", SLURM_CPUS_ON_NODE="96"))
  assert "export JAX_COORDINATOR_ADDRESS=gpu17:5555" in lines
  words = _srun(lines)
  assert words[:6] == ["srun", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                       "--cpus-per-task=96"]
  assert words[-len(MAIN):] == MAIN
  assert _tasks(lines) == {t: {"JAX_PROCESS_ID": str(t), "JAX_NUM_PROCESSES": "2",
                               "JAX_LOCAL_DEVICE_IDS": "0,1,2,3,4,5,6,7", "host": h}
                           for t, h in enumerate(["gpu17", "gpu18"])}
  # PROCS_PER from the environment, GPUs that Slurm listed in CUDA_VISIBLE_DEVICES
  lines = _ok(_run(SLURM, ["--dry-run", "/w"], slurm_env, PROCS_PER="node", CUDA_VISIBLE_DEVICES="4,5"))
  assert _tasks(lines)[1]["JAX_LOCAL_DEVICE_IDS"] == "0,1" and "--ntasks=2" in _srun(lines)


def test_slurm_per_gpu_picks_from_visible_devices(slurm_env):
  lines = _ok(_run(SLURM, ["--dry-run", "/w"], slurm_env, GPUS_PER_NODE="4", CUDA_VISIBLE_DEVICES="4,5,6,7"))
  tasks = _tasks(lines)
  assert "--ntasks=8" in _srun(lines) and "--ntasks-per-node=4" in _srun(lines)
  assert [tasks[t]["CUDA_VISIBLE_DEVICES"] for t in range(8)] == ["4", "5", "6", "7"] * 2


def test_slurm_dry_run_without_scontrol(env):
  # The script's own nodelist parser: PATH without any directory holding an scontrol.
  env = {**env, "PATH": ":".join(d for d in env["PATH"].split(":") if not os.path.exists(os.path.join(d, "scontrol")))}
  assert not shutil.which("scontrol", path=env["PATH"])
  lines = _ok(_run(SLURM, ["--dry-run", "--procs-per=node", "/w"], env, SLURM_JOB_NODELIST="n[008-010,012],login"))
  assert "export JAX_COORDINATOR_ADDRESS=n008:61441" in lines  # SLURM_JOB_ID defaults to 1
  assert [v["host"] for v in _tasks(lines).values()] == ["n008", "n009", "n010", "n012", "login"]


def test_slurm_runs_what_dry_run_prints(slurm_env, tmp_path):
  """Outside --dry-run the script execs srun (a stub running each task here) with the same words."""
  log = tmp_path / "tasks.jsonl"
  _stub(tmp_path / "bin", "srun",
        "import subprocess\n"
        "i = next(i for i, a in enumerate(sys.argv) if i and not a.startswith('--'))\n"
        "opts, cmd = dict(a[2:].split('=', 1) for a in sys.argv[1:i]), sys.argv[i:]\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "n, per = int(opts['ntasks']), int(opts['ntasks-per-node'])\n"
        "for t in range(n):\n"
        "  subprocess.run(cmd, check=True, env={**os.environ, 'SLURM_PROCID': str(t), 'SLURM_LOCALID': str(t % per),\n"
        "                                       'SLURM_NTASKS': str(n)})\n")
  _stub(tmp_path / "bin", "fake_python",
        "keys = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'CUDA_VISIBLE_DEVICES',\n"
        "        'JAX_LOCAL_DEVICE_IDS', 'XLA_PYTHON_CLIENT_MEM_FRACTION')\n"
        f"open({str(log)!r}, 'a').write(json.dumps([{{k: os.environ.get(k) for k in keys}}, sys.argv[1:]]) + '\\n')\n")
  env = {**slurm_env, "PYTHON": "fake_python", "GPUS_PER_NODE": "2"}
  args = ["/ckpt/run", "--config.data.dirs=/data/a b"]
  dry = _ok(_run(SLURM, ["--dry-run", *args], env))
  r = _run(SLURM, args, env)
  assert r.returncode == 0, r.stderr
  srun, *tasks = [json.loads(l) for l in log.read_text().splitlines()]
  assert ["srun", *srun] == _srun(dry)
  assert len(tasks) == 4
  for t, (vars_, argv) in enumerate(tasks):
    assert vars_ == {"JAX_COORDINATOR_ADDRESS": "gpu17:61444", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": str(t),
                     "CUDA_VISIBLE_DEVICES": str(t % 2), "JAX_LOCAL_DEVICE_IDS": "0",
                     "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92"}
    assert argv == MAIN[1:]  # the space survives: no re-quoting on the way


@pytest.mark.parametrize("args", [["--dry-run"], [], ["--dry-run", "--procs-per=gpu"]])
def test_slurm_missing_workdir(slurm_env, args):
  r = _run(SLURM, args, slurm_env)
  assert r.returncode != 0 and r.stdout == ""
  assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("usage: ")


def test_slurm_refusals(env, slurm_env):
  r = _run(SLURM, ["/w"], env)  # not in an allocation, not a dry run
  assert r.returncode == 2 and "sbatch" in r.stderr
  r = _run(SLURM, ["--dry-run", "--procs-per=rack", "/w"], slurm_env)
  assert r.returncode == 2 and "gpu or node" in r.stderr


def test_sbatch_headers_come_before_any_command():
  lines = SLURM.read_text().splitlines()
  first_command = next(i for i, l in enumerate(lines) if l.strip() and not l.startswith("#"))
  headers = [i for i, l in enumerate(lines) if l.startswith("#SBATCH")]
  assert headers and max(headers) < first_command and lines[0].startswith("#!")
  assert {"#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8"} <= set(lines)
