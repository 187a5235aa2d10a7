"""JAX vs PyTorch at SmolLM2-135M's shape: MNTP training step (AdamW) and encoder forward.

  python benchmarks/text_encoder.py [--batch 8] [--length 128] [--rounds 5] [--steps 2]

Same weights (the real SmolLM2-135M from the asset cache), same bidirectional mask, same loss
(masked next-token prediction, 20% masked), fp32, in one process. The three sides run in
alternating blocks (JAX, torch eager, torch.compile) and the printed ratios are medians of the
per-round ratios, so slow drift on a noisy machine cancels out. Goals: JAX step time <= 0.8x
torch eager and <= 1.0x torch.compile.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from cxrclip_jax import losses
from cxrclip_jax.export import hf
from data_pipelines import assets
from side_by_side import alternate, median_ratio, parse_args


def make_batch(batch, length, vocab, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (batch, length)).astype(np.int64)
  mask = np.ones((batch, length), np.int64)
  labels = np.where(rng.random((batch, length)) < 0.2, ids, losses.IGNORE_INDEX)
  return ids, mask, labels


def jax_sides(model_dir, ids, mask, labels):
  module, params = hf.load_mntp(model_dir)
  params = jax.device_put(params)
  opt = optax.adamw(1e-5, weight_decay=0.01)
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in (("ids", ids), ("mask", mask), ("labels", labels))}

  def loss_fn(p, b):
    _, logits = module.apply({"params": p}, b["ids"], b["mask"])
    return losses.mntp_loss(logits, b["labels"])[0]

  @jax.jit
  def forward(p, b):
    return module.apply({"params": p}, b["ids"], b["mask"], method=lambda m, i, a: m.model(i, a))

  def train_step(state, b):
    p, o = state
    loss, grads = jax.value_and_grad(loss_fn)(p, b)
    updates, o = opt.update(grads, o, p)
    return (optax.apply_updates(p, updates), o), loss

  step = jax.jit(train_step, donate_argnums=0)
  state = [(params, opt.init(params))]

  def run_step():
    state[0], loss = step(state[0], batch)
    return float(loss)

  def run_forward():
    return float(forward(state[0][0], batch)[0, 0, 0])

  return run_step, run_forward


def torch_sides(model_dir, ids, mask, labels, compiled):
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
  ids_t, labels_t = torch.from_numpy(ids), torch.from_numpy(labels)
  # LLM2Vec's bidirectional attention: a padding-only 4D mask, as in our JAX model.
  mask4 = torch.from_numpy(mask)[:, None, None, :].bool().expand(-1, 1, ids.shape[1], -1)
  run = torch.compile(model) if compiled else model

  def loss_fn():
    logits = run(input_ids=ids_t, attention_mask=mask4).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels_t[:, 1:].reshape(-1),
                                             ignore_index=losses.IGNORE_INDEX)

  def run_step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    opt.step()
    return float(loss)

  def run_forward():
    with torch.no_grad():
      return float(run.model(input_ids=ids_t, attention_mask=mask4).last_hidden_state[0, 0, 0])

  return run_step, run_forward


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--length", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--no_compile", action="store_true", help="skip the torch.compile side")
  args = parse_args(ap)
  model_dir = assets.path("smollm2")
  ids, mask, labels = make_batch(args.batch, args.length, 49152)
  sides = {"jax": jax_sides(model_dir, ids, mask, labels),
           "torch_eager": torch_sides(model_dir, ids, mask, labels, compiled=False)}
  if not args.no_compile:
    sides["torch_compile"] = torch_sides(model_dir, ids, mask, labels, compiled=True)
  print(f"devices: jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}; "
        f"SmolLM2-135M, B={args.batch}, L={args.length}, fp32")
  for name, (step, fwd) in sides.items():  # warm-up: compilation, allocator, first-step slowness
    t = time.perf_counter()
    step(); step(); fwd(); fwd()
    print(f"warm-up {name}: {time.perf_counter() - t:.1f}s")
  times = {}
  for kind, k in (("step", 0), ("forward", 1)):
    per_side = alternate({name: fns[k] for name, fns in sides.items()}, args.rounds, args.steps)
    times.update({(name, kind): t for name, t in per_side.items()})
  print(f"{'':14s}{'step s (median)':>18s}{'forward s (median)':>20s}")
  for name in sides:
    print(f"{name:14s}{statistics.median(times[(name, 'step')]):18.3f}{statistics.median(times[(name, 'forward')]):20.3f}")
  for other, goal in (("torch_eager", 0.8), ("torch_compile", 1.0)):
    if other not in sides:
      continue
    for kind in ("step", "forward"):
      ratio = median_ratio(times[("jax", kind)], times[(other, kind)])
      print(f"jax/{other} {kind}: median paired ratio {ratio:.2f}"
            + (f" (goal <= {goal})" if kind == "step" else ""))


if __name__ == "__main__":
  main()
