r"""Accelerator readiness: bf16 training-step time, throughput and MFU at the released shapes.

  python benchmarks/accelerator_step.py [--stage=text|clip|both] [--shape=released|tiny]
      [--batch=N[,N...]] [--steps=10] [--warmup=2] [--remat=none|dots|full[,...]]
      [--attention=auto|cudnn|xla] [--dtype=bfloat16|float32] [--text_task=supervised|mntp]
      [--peak_tflops=X]

Stages (one device, device 0; random init, nothing downloaded; every weight trained, so that a
step's FLOPs are the 6N-per-token kind):
  text  LLM2VEC4CXR's supervised-contrastive step (default; `--text_task=mntp`: the MNTP step) on a
        bidirectional Llama-3.2-1B (hidden 2048, 16 layers, 32 heads, 8 kv heads, intermediate
        8192, vocab 128256, tied embeddings) at 512 tokens. `--batch` counts queries, each with its
        positive and configs/llm2vec4cxr.py:mimic's one hard negative (3 sequences per query; mntp:
        sequences), all in one encoder pass with losses.hard_negative_infonce (scale 50) as
        tasks/supervised.py; mntp: LlmForMNTP + losses.mntp_loss, 20 % of tokens masked.
  clip  LLM2CLIP4CXR's step with the text side cached (ClipConfig.text_mode="cached": the batch
        carries the frozen LLM's pooled (B, 2048) report embeddings and only the LayerNorm+Linear
        adapter trains on them): a CLIP ViT-L/14 at 448 px (hidden 1024, 24 layers, 16 heads, mlp
        4096, 1025 tokens, CLS pooling), projection and adapter into 1280 dims, similarity "paper",
        losses.infonce (tasks/clip_loss.make_loss_fn, logit-scale clamp after the update).
        `--batch` counts images.
Both steps are the project's own: optim.build (AdamW + clipping) and train/step.make_train_step
(jitted, state donated). `--shape=tiny` runs the same code at toy sizes (the CPU test).

Model FLOPs per step (the MFU numerator; remat recomputation is *not* counted):
  6 * sum over weight matmuls (kernel params x rows it multiplies)          fwd 2 + bwd 4
  + 12 * layers * T^2 * (heads * head_dim) per sequence                      QK^T and PV, fwd + bwd
with T the sequence length (text 512; ViT 1 + (448/14)^2 = 1025) and heads * head_dim = hidden
(2048 text, 1024 ViT). Bidirectional attention: nothing is halved. Rows are tokens for the
decoder layers (and the tied LM head of mntp, applied at every position), patches for the ViT's
patch embedding, tokens for its blocks, one per image for the visual projection and one per text
for the adapter. Embedding gathers, norms, biases, activations, pooling, the loss and the
(B, B) similarity matmul are not counted. MFU = model FLOPs / step time / peak, peak bf16 dense by
`device_kind` (H100/H200 989, A100 312, TPU v4 275, v5e 197, v5p 459, v6e 918 TFLOP/s) or
`--peak_tflops`; unknown kinds (CPU) print "-".

Attention: `--attention=auto` takes cuDNN's fused flash attention (`jax.nn.dot_product_attention(
implementation="cudnn")`, via the models' `attention_impl` config field) on a GPU in bf16, and
falls back to XLA's when cuDNN refuses the shapes at compile time (the table says which ran).
Remat: none | dots (the loss under `jax.checkpoint` with
`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`: every weight matmul's output is kept,
attention and elementwise ops are recomputed in the backward) | full (the models' own per-layer
`nn.remat`, nothing inside a block saved: what the mimic configs run).

Goals (printed beside the figure): text >= 45 % MFU, clip >= 35 % MFU on one H100/H200-class GPU.

The H200 run (one GPU, one call; two compiles, expected to take a few minutes; batches per device):

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python benchmarks/accelerator_step.py --stage=both \
      --shape=released --dtype=bfloat16 --attention=auto --remat=dots --steps=10 --warmup=2

(text: 16 queries = 48 sequences x 512 tokens per step; clip: 64 images at 448 px). With time to
spare, the remat/batch sweep (comma lists run in one process, one compile per row):

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python benchmarks/accelerator_step.py --stage=text \
      --shape=released --remat=none,dots --batch=16,32 --steps=5 --warmup=1

By estimate (not yet measured), `--remat=none` at the clip default batch fits 141 GB only with cuDNN
attention: XLA's attention keeps 16 x 1025^2 fp32 logits per image and layer for the backward
(~100 GB at 64 images; dots and full recompute them).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for `configs`
from configs import llm2clip, llm2vec4cxr
from cxrclip_jax import losses, optim
from cxrclip_jax.models.clip import ClipConfig, DualTower
from cxrclip_jax.models.llm_encoder import LlmConfig, LlmForMNTP
from cxrclip_jax.models.text_encoder import TextEncoder
from cxrclip_jax.models.vision import VitConfig
from cxrclip_jax.tasks import clip_loss
from cxrclip_jax.train.state import TrainState, merge
from cxrclip_jax.train.step import make_train_step

GOALS = {"text": 45.0, "clip": 35.0}  # MFU %, one H100/H200-class GPU
# Peak dense bf16 TFLOP/s by device_kind substring (lower case), first match wins.
PEAK_TFLOPS = (("h200", 989.0), ("h100", 989.0), ("a100", 312.0), ("v6 lite", 918.0), ("v6e", 918.0),
               ("v5 lite", 197.0), ("v5e", 197.0), ("v5p", 459.0), ("v5", 459.0), ("v4", 275.0))

# Llama-3.2-1B(-Instruct)'s config.json fields (what LLM2VEC4CXR is built on).
LLAMA_3_2_1B = dict(
    model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu", rms_norm_eps=1e-5,
    rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False,
    mlp_bias=False, bos_token_id=128000, eos_token_id=128001,
    rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192))
# openai/clip-vit-large-patch14's vision_config (run at 448 px, as configs/llm2clip.py:mimic).
CLIP_VIT_L14 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, patch_size=14, image_size=224, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5)
# Toy versions of both for --shape=tiny (the CPU test): the same families and code paths.
TINY_LLM = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
TINY_VIT = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, patch_size=8, image_size=32)


@dataclasses.dataclass(frozen=True)
class Shape:
  llm: dict          # HF config fields of the text LLM
  seq_len: int       # text tokens per sequence
  n_negatives: int   # hard negatives per query (supervised)
  scale: float       # supervised cosine scale
  text_batch: int    # default queries (supervised) / sequences (mntp) per device
  vit: VitConfig
  embed_dim: int
  similarity: str
  clip_batch: int    # default images per device


def shapes(name: str) -> Shape:
  """The released shapes from configs/llm2vec4cxr.py:mimic and configs/llm2clip.py:mimic (their
  model dirs swapped for the architectures' HF configs above), or toy ones with the tiny configs'
  stage settings."""
  if name == "released":
    t, c = llm2vec4cxr.get_config("mimic"), llm2clip.get_config("mimic")
    vit = VitConfig.from_hf(CLIP_VIT_L14, image_size=c.data.image_size, pooling=c.vision.pooling)
    return Shape(LLAMA_3_2_1B, t.supervised.max_length, t.supervised.n_negatives, t.supervised.scale, 16,
                 vit, c.clip.embed_dim, c.clip.similarity, 64)
  if name == "tiny":
    t, c = llm2vec4cxr.get_config("tiny"), llm2clip.get_config("tiny")
    vit = VitConfig.from_hf(TINY_VIT, image_size=c.data.image_size, pooling="cls")
    return Shape(TINY_LLM, t.supervised.max_length, 1, t.supervised.scale, 2, vit, c.clip.embed_dim,
                 c.clip.similarity, 4)
  raise ValueError(f"unknown shape {name!r}: released | tiny")


# ------------------------------------------------------------------------------------ FLOPs

def text_matmuls(c: LlmConfig, sequences: int, length: int, task: str) -> dict[str, tuple[int, int]]:
  """{name: (kernel params, rows multiplied)} of the text step's weight matmuls."""
  d, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
  per_layer = d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size  # q, k, v, o; gate, up, down
  tokens = sequences * length
  out = {"decoder_layers": (c.num_hidden_layers * per_layer, tokens)}
  if task == "mntp":
    out["lm_head"] = (c.vocab_size * d, tokens)  # tied: embed_tokens.weight^T, or lm_head/kernel
  return out


def text_flops(c: LlmConfig, sequences: int, length: int, task: str) -> int:
  mm = sum(6 * p * rows for p, rows in text_matmuls(c, sequences, length, task).values())
  return mm + 12 * c.num_hidden_layers * length ** 2 * c.num_attention_heads * c.head_dim * sequences


def clip_matmuls(v: VitConfig, images: int, text_dim: int, embed_dim: int) -> dict[str, tuple[int, int]]:
  """{name: (kernel params, rows multiplied)} of the cached-text CLIP step's weight matmuls."""
  if v.pooling == "map":
    raise ValueError("FLOPs of the map pooling head are not counted: use cls or mean pooling")
  d, patches = v.hidden_size, v.grid ** 2
  per_layer = 4 * d * d + 2 * d * v.intermediate_size  # q, k, v, out; fc1, fc2
  return {"patch_embedding": (v.patch_size ** 2 * v.num_channels * d, images * patches),
          "encoder_layers": (v.num_hidden_layers * per_layer, images * v.num_positions),
          "visual_projection": (d * embed_dim, images),
          "text_adapter": (text_dim * embed_dim, images)}


def clip_flops(v: VitConfig, images: int, text_dim: int, embed_dim: int) -> int:
  mm = sum(6 * p * rows for p, rows in clip_matmuls(v, images, text_dim, embed_dim).values())
  return mm + 12 * v.num_hidden_layers * v.num_positions ** 2 * v.hidden_size * images


def kernel_params(params) -> int:
  """Params of the tree's weight matmuls: every `kernel` (Dense layers, the patch embedding). A tied
  MNTP head's table (`embed_tokens/weight`) is added by the caller."""
  return sum(int(np.prod(x.shape)) for k, x in traverse_util.flatten_dict(params).items() if k[-1] == "kernel")


# ------------------------------------------------------------------------------------ steps

def _remat_loss(loss_fn, remat: str):
  if remat == "dots":
    return jax.checkpoint(loss_fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  return loss_fn


def _state(params, tx):
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(jax.random.key(1)))


def _init(model, *inputs):
  """Params created on the device by a jitted init (no host copy of a 1B model)."""
  return jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), *inputs)["params"]))()


def text_setup(shape: Shape, batch: int, task: str, dtype: str, attention: str, remat: str):
  """(step, state, batch, flops, matmul params of the formula, of the tree, sequences)."""
  c = LlmConfig.from_hf(shape.llm, is_causal=False, dtype=dtype, remat=remat == "full", attention_impl=attention)
  length, rng = shape.seq_len, np.random.default_rng(0)
  ids = lambda n: jnp.asarray(rng.integers(0, c.vocab_size, (n, length)), jnp.int32)
  if task == "supervised":
    n, model = batch * (2 + shape.n_negatives), TextEncoder(c, pooling="mean")
    data = {"query_input_ids": ids(batch), "positive_input_ids": ids(batch),
            "negative_input_ids": ids(batch * shape.n_negatives).reshape(batch, shape.n_negatives, length),
            "negative_valid": jnp.ones((batch, shape.n_negatives), bool)}
    for part in ("query", "positive", "negative"):
      data[f"{part}_attention_mask"] = data[f"{part}_embed_mask"] = jnp.ones_like(data[f"{part}_input_ids"])
    small = jnp.zeros((2, 8), jnp.int32)
    params = _init(model, small, jnp.ones_like(small), jnp.ones_like(small))

    def loss_fn(params, frozen, b, rng):
      # As tasks/supervised.py: one encoder pass over queries, positives and negatives.
      k = b["query_input_ids"].shape[0]
      rows = lambda key: jnp.concatenate([b["query_" + key], b["positive_" + key],
                                          b["negative_" + key].reshape(-1, length)])
      emb = model.apply({"params": merge(params, frozen)}, rows("input_ids"), rows("attention_mask"),
                        rows("embed_mask"), deterministic=False, rngs={"dropout": rng})
      loss = losses.hard_negative_infonce(emb[:k], emb[k:2 * k], emb[2 * k:], scale=shape.scale,
                                          negative_valid=b["negative_valid"])
      return loss, {}
  elif task == "mntp":
    n, model = batch, LlmForMNTP(c)
    x = ids(batch)
    masked = jnp.asarray(rng.random((batch, length)) < 0.2)
    data = {"input_ids": x, "attention_mask": jnp.ones_like(x),
            "labels": jnp.where(masked, x, losses.IGNORE_INDEX).astype(jnp.int32)}
    small = jnp.zeros((2, 8), jnp.int32)
    params = _init(model, small, jnp.ones_like(small))

    def loss_fn(params, frozen, b, rng):
      # As tasks/mntp.py.
      _, logits = model.apply({"params": merge(params, frozen)}, b["input_ids"], b["attention_mask"],
                              deterministic=False, rngs={"dropout": rng})
      loss, count = losses.mntp_loss(logits, b["labels"])
      return loss, {"weight": count.astype(jnp.float32)}
  else:
    raise ValueError(f"unknown text task {task!r}: supervised | mntp")
  tx, schedule = optim.build(params, lr=1e-5, total_steps=1000, warmup_steps=10, weight_decay=0.0)
  step = make_train_step(_remat_loss(loss_fn, remat), tx, schedule)
  tree = kernel_params(params) + (c.vocab_size * c.hidden_size if task == "mntp" and c.tie_word_embeddings else 0)
  formula = sum(p for p, _ in text_matmuls(c, n, length, task).values())
  return step, _state(params, tx), data, text_flops(c, n, length, task), formula, tree, n


def clip_setup_(shape: Shape, batch: int, dtype: str, attention: str, remat: str):
  """(step, state, batch, flops, matmul params of the formula, of the tree, images)."""
  v = dataclasses.replace(shape.vit, dtype=dtype, remat=remat == "full", attention_impl=attention)
  text_dim = shape.llm["hidden_size"]
  model = DualTower(v, ClipConfig(embed_dim=shape.embed_dim, text_mode="cached", similarity=shape.similarity),
                    dtype=jnp.dtype(dtype))
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.standard_normal((batch, v.image_size, v.image_size, 3)), jnp.float32),
          "text_emb": jnp.asarray(rng.standard_normal((batch, text_dim)), jnp.float32),
          "text_id": jnp.arange(batch, dtype=jnp.int32), "study_id": jnp.arange(batch, dtype=jnp.int32)}
  params = _init(model, jnp.zeros((2, v.image_size, v.image_size, 3)), {"text_emb": jnp.zeros((2, text_dim))})
  tx, schedule = optim.build(params, lr=1e-5, total_steps=1000, warmup_steps=10)
  loss_fn = clip_loss.make_loss_fn(model, loss="infonce", multi_positive=False)
  step = make_train_step(_remat_loss(loss_fn, remat), tx, schedule, post_update=clip_loss.clamp_scale_in_place)
  formula = sum(p for p, _ in clip_matmuls(v, batch, text_dim, shape.embed_dim).values())
  return (step, _state(params, tx), data, clip_flops(v, batch, text_dim, shape.embed_dim), formula,
          kernel_params(params), batch)


# ------------------------------------------------------------------------------------ runner

def peak_tflops(kind: str, override: float | None) -> float | None:
  if override:
    return override
  kind = kind.lower()
  return next((p for key, p in PEAK_TFLOPS if key in kind), None)


def resolve_attention(requested: str, dtype: str) -> list[str]:
  """Implementations to try, in order."""
  gpu = jax.devices()[0].platform == "gpu"
  if requested == "auto":
    return ["cudnn", "xla"] if gpu and dtype in ("bfloat16", "float16") else ["xla"]
  return [requested]


def _peak_memory_gib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 30


def run_one(stage: str, shape_name: str, batch: int, args, remat: str) -> dict:
  shape = shapes(shape_name)
  tried, last_error = [], None
  for impl in resolve_attention(args.attention, args.dtype):
    if stage == "text":
      step, state, data, flops, formula, tree, n = text_setup(
          shape, batch or shape.text_batch, args.text_task, args.dtype, impl, remat)
    else:
      step, state, data, flops, formula, tree, n = clip_setup_(shape, batch or shape.clip_batch, args.dtype, impl,
                                                               remat)
    if formula != tree:
      raise AssertionError(f"{stage}: the FLOP formula counts {formula} matmul params, the model has {tree}")
    frozen = {}
    t0 = time.perf_counter()
    try:
      compiled = step.lower(state, frozen, data).compile()
    except Exception as e:  # noqa: BLE001 - cuDNN refusing a shape surfaces as various errors
      if args.attention != "auto" or impl == "xla":
        raise
      tried.append(impl)
      last_error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
      print(f"{stage}: {impl} attention did not compile ({last_error}); falling back", flush=True)
      del step, state, data
      gc.collect()
      continue
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.warmup + args.steps):
      t = time.perf_counter()
      state, metrics = compiled(state, frozen, data)
      jax.block_until_ready((state, metrics))
      if i >= args.warmup:
        times.append(time.perf_counter() - t)
    loss = float(metrics["loss"])
    seconds = statistics.median(times)
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind, args.peak_tflops)
    tflops = flops / seconds / 1e12
    if stage == "text":
      L = shape.seq_len
      what = f"text:{args.text_task} ({n}x{L})"
      rate, unit = n * L / seconds, "tokens/s"
    else:
      what = f"clip:cached ({shape.vit.image_size}px, {shape.vit.num_positions} tok)"
      rate, unit = n / seconds, "images/s"
    row = dict(stage=stage, what=what, shape=shape_name, batch=batch or (shape.text_batch if stage == "text"
                                                                         else shape.clip_batch),
               step_ms=seconds * 1e3, rate=rate, unit=unit, flops_per_step=int(flops), tflops=tflops,
               mfu=None if peak is None else 100 * tflops / peak, peak_tflops=peak, goal_mfu=GOALS[stage],
               device_kind=kind, attention=impl + (f" (after {','.join(tried)} failed)" if tried else ""),
               remat=remat, dtype=args.dtype, compile_s=compile_s, loss=loss, peak_mem_gib=_peak_memory_gib(),
               matmul_params=formula, fallback_error=last_error)
    del step, compiled, state, data
    gc.collect()
    return row
  raise RuntimeError(f"{stage}: no attention implementation compiled ({last_error})")


def format_table(rows: list[dict]) -> str:
  head = ("stage", "shape", "batch", "step ms", "throughput", "FLOP/step", "TFLOP/s", "MFU %", "goal", "device",
          "attention", "remat", "peak GiB")
  body = []
  for r in rows:
    body.append((r["what"], r["shape"], str(r["batch"]), f"{r['step_ms']:.2f}", f"{r['rate']:.1f} {r['unit']}",
                 f"{r['flops_per_step']:.6e}", f"{r['tflops']:.4g}",
                 "-" if r["mfu"] is None else f"{r['mfu']:.1f}",
                 f">= {r['goal_mfu']:.0f} %" + ("" if r["mfu"] is None else (" met" if r["mfu"] >= r["goal_mfu"]
                                                                           else " missed")),
                 r["device_kind"], r["attention"], r["remat"],
                 "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"))
  widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
  line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(b) for b in body])


def parse(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--stage", default="both", choices=("text", "clip", "both"))
  ap.add_argument("--shape", default="released", choices=("released", "tiny"))
  ap.add_argument("--batch", default="0", help="per device, comma list; 0: the stage's default "
                  "(text: queries for supervised, sequences for mntp; clip: images)")
  ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  ap.add_argument("--remat", default="dots", help="comma list of none | dots | full")
  ap.add_argument("--attention", default="auto", choices=("auto", "cudnn", "xla"))
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--text_task", default="supervised", choices=("supervised", "mntp"))
  ap.add_argument("--peak_tflops", type=float, default=None, help="override the device's peak (TFLOP/s)")
  ap.add_argument("--json", default="", help="also write the rows to this JSON file")
  args = ap.parse_args(argv)
  args.batches = [int(b) for b in args.batch.split(",")]
  args.remats = args.remat.split(",")
  for r in args.remats:
    if r not in ("none", "dots", "full"):
      ap.error(f"--remat {r!r}: none | dots | full")
  if args.steps < 1 or args.warmup < 0:
    ap.error("--steps >= 1 and --warmup >= 0")
  return args


def main(argv=None) -> list[dict]:
  args = parse(argv)
  d = jax.devices()[0]
  print(f"jax {jax.__version__} on {d.platform} ({d.device_kind}), {jax.device_count()} device(s), using 1; "
        f"{args.dtype}; {args.warmup} warm-up + {args.steps} timed steps", flush=True)
  rows = []
  for stage in (("text", "clip") if args.stage == "both" else (args.stage,)):
    for remat in args.remats:
      for batch in args.batches:
        row = run_one(stage, args.shape, batch, args, remat)
        rows.append(row)
        print(f"{row['what']}: batch {row['batch']}, remat {remat}, {row['attention']} attention: "
              f"{row['step_ms']:.2f} ms/step (compile {row['compile_s']:.1f}s, loss {row['loss']:.4f})", flush=True)
        print("RESULT " + json.dumps(row), flush=True)
  print()
  print(format_table(rows))
  print("\nMFU = model FLOPs/step (6 x matmul params x rows + 12 x layers x T^2 x hidden per sequence; remat "
        "recompute not counted) / median step time / peak bf16 dense FLOP/s. Goals: text >= 45 %, clip >= 35 % "
        "on one H100/H200-class GPU.")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  return rows


if __name__ == "__main__":
  main()
