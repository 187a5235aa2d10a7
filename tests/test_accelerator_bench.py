"""benchmarks/accelerator_step.py at --shape=tiny on the CPU: it runs both stages' real train steps,
prints a finite step time, and its FLOP count is the hand-computed one (the MFU formula)."""
import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hand_text_flops():
  # TINY_LLM: hidden 64, 2 layers, 4 heads x 16, 2 kv heads x 16, intermediate 128; supervised
  # tiny: 2 queries x (query + positive + 1 hard negative) = 6 sequences of 32 tokens.
  d, q, kv, inter, layers, length, seqs = 64, 4 * 16, 2 * 16, 128, 2, 32, 6
  per_layer = d * q + d * kv + d * kv + q * d + d * inter + d * inter + inter * d  # q k v o gate up down
  assert per_layer == 36864
  matmuls = 6 * layers * per_layer * seqs * length                                   # 84,934,656
  attention = 12 * layers * length * length * q * seqs                                # 9,437,184
  return matmuls + attention


def _hand_clip_flops():
  # TINY_VIT: CLIP family, 32 px / patch 8 -> 16 patches + CLS = 17 tokens, hidden 32, mlp 64,
  # 2 layers; 4 images; embed dim 16; cached text embeddings of the tiny LLM's width 64.
  images, patches, tokens, d, mlp, layers, embed, text = 4, 16, 17, 32, 64, 2, 16, 64
  patch = 8 * 8 * 3 * d * images * patches
  blocks = layers * (4 * d * d + 2 * d * mlp) * images * tokens
  heads = d * embed * images + text * embed * images  # visual projection, text adapter (one row each)
  attention = 12 * layers * tokens * tokens * d * images
  return 6 * (patch + blocks + heads) + attention  # 9,968,640


def test_tiny_run_prints_finite_times_and_the_hand_flop_count():
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip(),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_step.py"), "--shape=tiny",
                        "--steps=2", "--warmup=1", "--stage=both"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  rows = {r["stage"]: r for r in (json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines()
                                  if line.startswith("RESULT "))}
  assert set(rows) == {"text", "clip"}, out.stdout
  expected = {"text": _hand_text_flops(), "clip": _hand_clip_flops()}
  assert expected == {"text": 94_371_840, "clip": 9_968_640}
  table = out.stdout[out.stdout.index("stage "):].splitlines()
  header = [c.strip() for c in table[0].split("|")]
  for stage, row in rows.items():
    assert row["flops_per_step"] == expected[stage]
    assert math.isfinite(row["step_ms"]) and row["step_ms"] > 0 and math.isfinite(row["loss"])
    assert row["tflops"] == row["flops_per_step"] / (row["step_ms"] / 1e3) / 1e12
    assert row["mfu"] is None  # no peak known for a CPU
    line = next(l for l in table[2:] if l.startswith(f"{stage}:"))
    cells = dict(zip(header, (c.strip() for c in line.split("|"))))
    assert float(cells["FLOP/step"]) == expected[stage]
    assert math.isfinite(float(cells["step ms"])) and float(cells["step ms"]) > 0
    assert cells["attention"] == "xla" and cells["remat"] == "dots" and cells["MFU %"] == "-"
    assert cells["shape"] == "tiny" and cells["device"] == "cpu"


def _module():
  import importlib.util
  spec = importlib.util.spec_from_file_location("accelerator_step", ROOT / "benchmarks" / "accelerator_step.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod  # its dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def test_released_shapes_and_peaks():
  bench = _module()
  shape = bench.shapes("released")
  llm = bench.LlmConfig.from_hf(shape.llm)
  # Llama-3.2-1B has 1,235,814,400 params: 128256 x 2048 tied embeddings, 33 norms of 2048, the rest in matmuls.
  decoder = sum(p for p, _ in bench.text_matmuls(llm, 1, 512, "supervised").values())
  assert decoder == 1_235_814_400 - 128256 * 2048 - 33 * 2048
  seqs = shape.text_batch * (2 + shape.n_negatives)
  assert (shape.seq_len, shape.n_negatives, seqs) == (512, 1, 48)
  assert bench.text_flops(llm, seqs, 512, "supervised") == 6 * decoder * seqs * 512 + 12 * 16 * 512 ** 2 * 2048 * seqs
  assert bench.text_flops(llm, 1, 512, "mntp") == bench.text_flops(llm, 1, 512, "supervised") + 6 * 128256 * 2048 * 512
  v = shape.vit
  assert (v.family, v.image_size, v.patch_size, v.num_positions, v.pooling) == ("clip", 448, 14, 1025, "cls")
  vit = sum(p for p, _ in bench.clip_matmuls(v, 1, 2048, 1280).values())
  assert vit == 14 * 14 * 3 * 1024 + 24 * (4 * 1024 ** 2 + 2 * 1024 * 4096) + 1024 * 1280 + 2048 * 1280
  peaks = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA A100-SXM4-80GB": 312.0, "TPU v4": 275.0,
           "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0, "cpu": None}
  assert {k: bench.peak_tflops(k, None) for k in peaks} == peaks
  assert bench.peak_tflops("cpu", 2.5) == 2.5
  assert bench.resolve_attention("auto", "bfloat16") == ["xla"]  # no GPU here
