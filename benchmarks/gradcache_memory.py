"""GradCache (optim.contrastive_chunks) memory: the compiled gradient's temporary buffers vs chunks.

  python benchmarks/gradcache_memory.py [--batch 64] [--chunks 1,4,8] [--stages clip,text] [--remat]
  python benchmarks/gradcache_memory.py --mimic [--chunks 1,8]     # the paper's shapes, per device

Compiles (does not run) `jax.value_and_grad` of each stage's real loss (tasks/clip_loss.py,
tasks/supervised.py) for one device at a moderate shape, with params and batch as abstract
shapes, and prints XLA's memory_analysis: `temp` is the buffer assignment's temporaries (the
activations and residuals that GradCache bounds), `peak` adds arguments and outputs (params,
batch, gradients: the same for every c). Shapes:
  clip: from-scratch ViT 6 x 384 at 224 px / patch 16 (196 tokens, mean-pooled) + an LLM text side with LoRA
        (4 layers x 512, 128 tokens), linear adapter, InfoNCE over the batch;
  text: the supervised stage over the same LLM (LoRA): B queries + B positives + B hard negatives
        of 128 tokens, HardNegativeNLLLoss.
--remat turns on each tower's per-layer remat (as the mimic configs do): memory is then the
layer-boundary activations of the whole batch (c = 1) or of one chunk (c > 1).
--mimic: the mimic configs' shapes for one of 8 data-parallel devices (global batch 512 -> 64 rows
per device; a chunk of 512/8 is 8 rows per device): ViT-L/14 at 448 px (1024 patches, 24 x 1024)
and a Llama-3.2-1B-shaped LLM (16 x 2048, 512 tokens, latent-attention pooling) with LoRA, bf16
compute, per-layer remat. Slow to compile on a CPU (minutes per program).
The numbers are XLA:CPU's buffer assignment; an accelerator's differs in detail, not in scaling.
Goal: temp falls roughly as 1/c, to a floor of one chunk plus the (B, D) embeddings and the loss.
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrclip_jax import optim
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.clip import ClipConfig, DualTower
from cxrclip_jax.models.llm_encoder import LlmConfig
from cxrclip_jax.models.text_encoder import TextEncoder
from cxrclip_jax.models.vision import VitConfig
from cxrclip_jax.tasks import clip_loss, supervised
from cxrclip_jax.train.state import split

LORA_GROUPS = ((r"/lora/", {}), (r".*", {"frozen": True}))


SHAPES = {
    # A moderate shape that compiles in seconds on a CPU.
    "moderate": dict(text_len=128, image=224, pooling="mean", dtype="float32",
                     vit=dict(family="siglip", patch_size=16, hidden_size=384, intermediate_size=1536,
                              num_hidden_layers=6, num_attention_heads=6, pooling="mean"),
                     llm=dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                              num_attention_heads=8, num_key_value_heads=2, head_dim=64)),
    # configs/llm2clip.py:mimic and configs/llm2vec4cxr.py:mimic.
    "mimic": dict(text_len=512, image=448, pooling="latent_attention", dtype="bfloat16",
                  vit=dict(family="clip", patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, pooling="cls"),
                  llm=dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)),
}


def llm_config(shape, remat):
  return LlmConfig(**shape["llm"], is_causal=False, remat=remat, dtype=shape["dtype"],
                   lora=lora_lib.LoraConfig(rank=16, alpha=32.0))


def text_encoder(shape, remat):
  return TextEncoder(llm_config(shape, remat), pooling=shape["pooling"], num_latents=512, latent_heads=8)


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def clip_case(shape, batch, remat):
  size, length = shape["image"], shape["text_len"]
  vit = VitConfig(**shape["vit"], image_size=size, remat=remat, dtype=shape["dtype"])
  clip = ClipConfig(embed_dim=1280 if size == 448 else 256, text_mode="lora", text_pooling=shape["pooling"])
  model = DualTower(vit, clip, llm_config(shape, remat), dtype=jnp.dtype(shape["dtype"]))
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  data = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32), "input_ids": i32(batch, length),
          "attention_mask": i32(batch, length), "embed_mask": i32(batch, length),
          "text_id": i32(batch), "study_id": i32(batch)}
  text = {k: jnp.ones((2, 8), jnp.int32) for k in ("input_ids", "attention_mask", "embed_mask")}
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)), text)["params"]))
  groups = ((r"^text_encoder/.*/lora/", {}), (r"^text_encoder/", {"frozen": True}))
  trainable, frozen = split(params, optim.trainable_mask(params, groups))
  return (lambda c: clip_loss.make_loss_fn(model, contrastive_chunks=c)), trainable, frozen, data


def text_case(shape, batch, remat):
  model = text_encoder(shape, remat)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  data = {f"{part}_{k}": i32(*rows, shape["text_len"]) for part, rows in
          (("query", (batch,)), ("positive", (batch,)), ("negative", (batch, 1)))
          for k in ("input_ids", "attention_mask", "embed_mask")}
  data["negative_valid"] = jax.ShapeDtypeStruct((batch, 1), jnp.bool_)
  ids = jnp.zeros((2, 8), jnp.int32)
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, ids + 1, ids + 1)["params"]))
  trainable, frozen = split(params, optim.trainable_mask(params, LORA_GROUPS))
  return (lambda c: supervised.make_loss_fn(model, 50.0, contrastive_chunks=c)), trainable, frozen, data


def memory(loss_fn, trainable, frozen, data):
  """(temp bytes, peak bytes, compile seconds) of the jitted (loss, aux), grads computation."""
  grad = jax.value_and_grad(lambda p, f, b: loss_fn(p, f, b, jax.random.key(0)), has_aux=True)
  t = time.perf_counter()
  m = jax.jit(grad).lower(abstract(trainable), abstract(frozen), data).compile().memory_analysis()
  seconds = time.perf_counter() - t
  peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return m.temp_size_in_bytes, peak, seconds


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=0, help="rows (queries) per device; 0: 64")
  ap.add_argument("--chunks", default="")
  ap.add_argument("--mimic", action="store_true", help="the mimic configs' shapes (implies --remat)")
  ap.add_argument("--stages", default="clip,text")
  ap.add_argument("--remat", action="store_true", help="per-layer remat in the towers (the mimic configs')")
  args = ap.parse_args()
  shape = SHAPES["mimic" if args.mimic else "moderate"]
  remat = args.remat or args.mimic
  batch = args.batch or 64
  chunks = [int(c) for c in (args.chunks or ("1,8" if args.mimic else "1,4,8")).split(",")]
  cases = {"clip": clip_case, "text": text_case}
  mib = lambda b: b / 2 ** 20
  print(f"jax {jax.__version__} {jax.devices()[0].platform}; {'mimic' if args.mimic else 'moderate'} shapes; "
        f"batch {batch}; remat {remat}; compute {shape['dtype']}; one device, compiled memory_analysis")
  for stage in args.stages.split(","):
    make_loss, trainable, frozen, data = cases[stage](shape, batch, remat)
    base = None
    for c in chunks:
      temp, peak, seconds = memory(make_loss(c), trainable, frozen, data)
      base = base or (temp, peak)
      print(f"{stage:4s} chunks {c:2d}: temp {mib(temp):9.1f} MiB  peak {mib(peak):9.1f} MiB  "
            f"temp ratio {temp / base[0]:.3f}  peak ratio {peak / base[1]:.3f}  (compile {seconds:.0f}s)", flush=True)


if __name__ == "__main__":
  main()
