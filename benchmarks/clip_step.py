"""CLIP training step time at the demo shapes: text side cached vs lora vs full, and JAX vs PyTorch.

  python benchmarks/clip_step.py [--batch 64] [--rounds 5] [--text_rounds 2]

1. JAX, the three text modes at the demo config's shapes (configs/llm2clip.py:demo: its ViT at
   128 px; text side SmolLM2-135M cut to the config's `text.num_layers`, 128 tokens).
2. JAX vs an equivalent PyTorch step in cached mode: transformers' SiglipVisionModel with the same
   architecture and the same weights (exported by our HF exporter), the same projection, adapter
   and symmetric InfoNCE, AdamW, fp32, alternated in one process; medians of per-round ratios.
Goals: cached >= 5x faster than lora; JAX <= 0.8x torch eager.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for `configs`
from configs import llm2clip
from cxrclip_jax.export import hf, vision_hf
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.clip import ClipConfig, DualTower
from cxrclip_jax.tasks.clip_setup import vision_config
from cxrclip_jax.tasks.clip_loss import make_train_step
from cxrclip_jax.train.state import TrainState, split
from cxrclip_jax import optim
from data_pipelines import assets
from side_by_side import alternate, median_ratio, parse_args, timed

CONFIG = llm2clip.get_config("demo")
VIT = vision_config(CONFIG)
EMBED_DIM, TEXT_LEN, TEXT_LAYERS = CONFIG.clip.embed_dim, CONFIG.text.max_length, CONFIG.text.num_layers


def jax_step(mode, batch_size, llm_dir):
  lora = lora_lib.LoraConfig(**CONFIG.text.lora.to_dict()) if mode == "lora" else None
  layers = {"num_hidden_layers": TEXT_LAYERS} if TEXT_LAYERS else {}
  llm_config = hf.LlmConfig.from_hf(hf.read_config(llm_dir), lora=lora, **layers)
  model = DualTower(VIT, ClipConfig(embed_dim=EMBED_DIM, text_mode=mode), None if mode == "cached" else llm_config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(batch_size, VIT.image_size, VIT.image_size, 3)).astype(np.float32),
           "text_id": np.arange(batch_size, dtype=np.int32), "study_id": np.arange(batch_size, dtype=np.int32)}
  if mode == "cached":
    batch["text_emb"] = rng.normal(size=(batch_size, llm_config.hidden_size)).astype(np.float32)
  else:
    batch["input_ids"] = rng.integers(0, llm_config.vocab_size, (batch_size, TEXT_LEN)).astype(np.int32)
    batch["attention_mask"] = batch["embed_mask"] = np.ones((batch_size, TEXT_LEN), np.int32)
  text_in = {k: batch[k] for k in ("text_emb", "input_ids", "attention_mask", "embed_mask") if k in batch}
  params = nn.unbox(model.init(jax.random.key(0), batch["image"][:2], {k: v[:2] for k, v in text_in.items()})["params"])
  groups = ((r"^text_encoder/.*/lora/", {}), (r"^text_encoder/", {"frozen": True})) if mode == "lora" else ()
  trainable, frozen = split(params, optim.trainable_mask(params, groups))
  tx, lr_schedule = optim.build(trainable, lr=1e-4, total_steps=1000, groups=groups)
  state = [TrainState(jnp.zeros((), jnp.int32), trainable, tx.init(trainable), jax.random.key_data(jax.random.key(1)))]
  step = make_train_step(model, tx, lr_schedule, multi_positive=False)
  device_batch = jax.device_put(batch)

  def run():
    state[0], m = step(state[0], frozen, device_batch)
    return float(m["loss"])
  return run, params


def torch_step(batch_size, params):
  """The cached-mode step in PyTorch, with the JAX model's initial weights."""
  with tempfile.TemporaryDirectory() as d:
    vision_hf.save_vision_tower(d, VIT, jax.device_get(params["vision_model"]))
    vision = transformers.SiglipVisionModel.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa")
  to_t = lambda x: torch.from_numpy(np.array(x, np.float32))
  text_dim = params["text_adapter"]["layer_norm"]["weight"].shape[0]
  proj = torch.nn.Linear(VIT.hidden_size, EMBED_DIM, bias=False)
  proj.weight.data = to_t(params["visual_projection"]["kernel"]).T.contiguous()
  adapter = torch.nn.Sequential(torch.nn.LayerNorm(text_dim, eps=1e-5), torch.nn.Linear(text_dim, EMBED_DIM))
  adapter[0].weight.data, adapter[0].bias.data = (to_t(params["text_adapter"]["layer_norm"][k]) for k in ("weight", "bias"))
  adapter[1].weight.data = to_t(params["text_adapter"]["linear"]["kernel"]).T.contiguous()
  adapter[1].bias.data = to_t(params["text_adapter"]["linear"]["bias"])
  log_scale = torch.nn.Parameter(torch.tensor(float(params["logit_scale"])))
  modules = torch.nn.ModuleList([vision, proj, adapter])
  opt = torch.optim.AdamW(list(modules.parameters()) + [log_scale], lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                          weight_decay=0.05)
  rng = np.random.default_rng(0)
  # NCHW for torch's conv; the JAX side takes NHWC.
  images = torch.from_numpy(rng.normal(size=(batch_size, 3, VIT.image_size, VIT.image_size)).astype(np.float32))
  text = torch.from_numpy(rng.normal(size=(batch_size, text_dim)).astype(np.float32))
  labels = torch.arange(batch_size)

  def loss_fn():
    img = proj(vision(pixel_values=images).last_hidden_state.mean(1))
    txt = adapter(text)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    logits = img @ txt.T * log_scale.exp()  # clamped after the step, as on the JAX side
    return 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))
  def run():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(modules.parameters()) + [log_scale], 1.0)
    opt.step()
    with torch.no_grad():
      log_scale.clamp_(0, float(np.log(100)))
    return loss.item()
  return run


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--text_rounds", type=int, default=2, help="rounds for the (slow) lora/full modes")
  args = parse_args(ap)
  llm_dir = assets.path("smollm2")
  print(f"jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}; "
        f"batch {args.batch}; ViT {VIT.num_hidden_layers}x{VIT.hidden_size} at {VIT.image_size} px; "
        f"text {TEXT_LAYERS or 'all'} SmolLM2 layers x {TEXT_LEN} tokens; fp32")

  cached, params = jax_step("cached", args.batch, llm_dir)
  sides = {"jax": cached, "torch_eager": torch_step(args.batch, params)}
  for name, fn in sides.items():
    t = time.perf_counter()
    fn(); fn()
    print(f"warm-up {name}: {time.perf_counter() - t:.1f}s")
  times = alternate(sides, args.rounds, args.steps)
  for name in sides:
    print(f"cached step, {name:12s}: {statistics.median(times[name]) * 1000:8.0f} ms (median)")
  print(f"jax/torch_eager cached step: median paired ratio {median_ratio(times['jax'], times['torch_eager']):.2f} "
        "(goal <= 0.8)")

  mode_times = {"cached": times["jax"]}
  for mode in ("lora", "full"):
    fn = jax_step(mode, args.batch, llm_dir)[0]
    t = time.perf_counter()
    fn()
    print(f"warm-up jax {mode}: {time.perf_counter() - t:.1f}s")
    mode_times[mode] = [timed(fn, 1) for _ in range(args.text_rounds)]
    print(f"{mode} step, jax: {statistics.median(mode_times[mode]) * 1000:8.0f} ms (median)")
  for mode in ("lora", "full"):
    ratio = statistics.median(mode_times[mode]) / statistics.median(mode_times["cached"])
    print(f"{mode}/cached step time: {ratio:.1f}x" + (" (goal >= 5)" if mode == "lora" else ""))


if __name__ == "__main__":
  main()
