"""LLM2VEC4CXR training steps at the demo shapes, JAX vs PyTorch: tokens/s of MNTP and supervised.

  python benchmarks/text_stages.py [--rounds 5] [--steps 2] [--stages mntp,supervised]

JAX: the project's own trainer step (cxrclip_jax.train.loop.setup over tasks/mntp.py and
tasks/supervised.py at configs/llm2vec4cxr.py:demo: SmolLM2-135M cut to its first 10 layers, full
fine-tuning, fp32) on one real batch of the IU demo reports. PyTorch: the same step with
transformers' LlamaForCausalLM (same weights, bidirectional mask, loss, AdamW and clipping, eager,
fp32) on the same numpy batch. Both losses of the first step are checked to agree, then the sides
run in alternating blocks in one process; tokens are the real (attention_mask == 1) ones of a step
and the ratio is the median of per-round paired ratios.
Goal: JAX <= 1.0x torch eager time per step at the demo shapes.
"""
from __future__ import annotations

import argparse
import gc
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import numpy as np
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for `configs`
from configs import llm2vec4cxr
from cxrclip_jax import losses, sharding
from cxrclip_jax.export import hf
from cxrclip_jax.tasks import llm2vec4cxr as chain, mntp, supervised
from cxrclip_jax.train import loop
from data_pipelines import assets
from data_pipelines.tokenization import resolve_wrapper
from side_by_side import alternate, median_ratio, parse_args

TASKS = {"mntp": mntp, "supervised": supervised}


def jax_side(cfg, stage, workdir):
  """(step callable -> loss, host batch, cleanup) running the trainer's jitted, donated step."""
  mesh = sharding.make_mesh(dict(cfg.mesh))
  task = TASKS[stage].build(cfg, workdir, mesh)
  run = loop.setup(cfg, workdir, task, mesh)
  host = next(task.train_data(0))
  batch = task.device_batch(host)
  holder = {"state": run.state}  # the step donates its state: always pass the latest one

  def step():
    with sharding.activate(run.mesh):
      holder["state"], metrics = run.train_step(holder["state"], run.frozen, batch)
      jax.block_until_ready((holder["state"], metrics))
    return float(metrics["loss"])

  def cleanup():
    holder.clear()
    run.state = None
  return step, host, cleanup


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
  """(B, L) padding mask -> (B, 1, L, L) float: 0 where the key is real, the dtype's min elsewhere.

  Bidirectional as llm2vec: transformers 5.x's `create_causal_mask` returns a 4D mask as-is
  (masking_utils._preprocess_mask_arguments), and SDPA attention sets is_causal only when no mask
  is given, so no causal triangle is added."""
  b, l = attention_mask.shape
  keys = (1.0 - attention_mask.float()) * torch.finfo(torch.float32).min
  return keys[:, None, None, :].expand(b, 1, l, l)


def torch_side(cfg, stage, model_dir, host):
  """The same step in PyTorch eager; returns a callable -> loss."""
  model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
  if cfg.num_layers:
    model.model.layers = model.model.layers[:cfg.num_layers]
    model.config.num_hidden_layers = cfg.num_layers
  model.train()  # attention_dropout from the checkpoint's config, as LlmConfig.from_hf (SmolLM2: 0)
  trained = model if stage == "mntp" else model.model  # supervised: the pooled encoder, no LM head
  o = cfg.optim
  # As optim.build: no weight decay on norms (SmolLM2 has no biases). A constant lr: the JAX
  # side's warmup/cosine schedule changes the update's values, not its cost.
  named = list(trained.named_parameters())
  groups = [{"params": [p for n, p in named if p.ndim >= 2 and "norm" not in n], "weight_decay": o.weight_decay},
            {"params": [p for n, p in named if p.ndim < 2 or "norm" in n], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in host.items()}

  def mntp_loss():
    logits = model(input_ids=t["input_ids"].long(), attention_mask=additive_mask(t["attention_mask"])).logits
    # losses.mntp_loss: the token at i predicted from position i - 1, mean over the masked tokens.
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             t["labels"][:, 1:].reshape(-1).long(), ignore_index=losses.IGNORE_INDEX)

  def supervised_loss():
    # As tasks/supervised.py: queries, positives and negatives in one encoder pass (one L per batch),
    # masked-mean pooled; losses.hard_negative_infonce: each query against every positive and
    # every valid negative.
    b, length = t["query_input_ids"].shape
    rows = lambda k: torch.cat([t["query_" + k], t["positive_" + k], t["negative_" + k].reshape(-1, length)])
    hidden = model.model(input_ids=rows("input_ids").long(), attention_mask=additive_mask(rows("attention_mask")))
    m = rows("embed_mask").float()[..., None]  # pooling.masked_mean
    emb = (hidden.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)
    q, pos, neg = emb[:b], emb[b:2 * b], emb[2 * b:]
    cands = torch.cat([pos, neg])
    valid = torch.cat([torch.ones(b, dtype=torch.bool), t["negative_valid"].reshape(-1)])
    norm = lambda x: torch.nn.functional.normalize(x, dim=-1, eps=1e-8)
    scores = (norm(q) @ norm(cands).T * cfg.supervised.scale).masked_fill(~valid[None], -1e9)
    return torch.nn.functional.cross_entropy(scores, torch.arange(b))

  loss_fn = mntp_loss if stage == "mntp" else supervised_loss

  def step():
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), o.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()
  return step


def describe(stage, host) -> tuple[str, int]:
  """(shapes of the batch, real tokens per step). Padding negatives (negative_valid False) are
  still encoded by both sides, so their tokens count."""
  keys = [k for k in host if k.endswith("attention_mask")]
  shapes = ", ".join(f"{k[:-len('attention_mask')].rstrip('_') or stage} {tuple(host[k].shape)}" for k in keys)
  return shapes, int(sum(host[k].sum() for k in keys))


def bench(c, stage, model_dir, wrapper, args):
  cfg = chain.stage_config(c, stage, model_dir, wrapper)
  with tempfile.TemporaryDirectory() as workdir:
    jax_step, host, cleanup = jax_side(cfg, stage, workdir)
    shapes, tokens = describe(stage, host)
    print(f"{stage}: batch {shapes}; {tokens} real tokens per step", flush=True)
    sides = {"jax": jax_step, "torch": torch_side(cfg, stage, model_dir, host)}
    first = {}
    for name, fn in sides.items():  # the first step: compilation, and the losses of the same weights
      t = time.perf_counter()
      first[name] = fn()
      print(f"  warm-up {name}: {time.perf_counter() - t:.1f}s, first-step loss {first[name]:.6f}", flush=True)
    np.testing.assert_allclose(first["jax"], first["torch"], rtol=1e-3, err_msg=f"{stage}: first-step losses")
    times = alternate(sides, args.rounds, args.steps)
    cleanup()
  ms = {name: statistics.median(times[name]) * 1000 for name in sides}
  tok_s = {name: tokens / statistics.median(times[name]) for name in sides}
  print(f"{stage}: jax {ms['jax']:.0f} ms/step ({tok_s['jax']:.0f} tok/s), torch {ms['torch']:.0f} ms/step "
        f"({tok_s['torch']:.0f} tok/s), jax/torch time ratio {median_ratio(times['jax'], times['torch']):.2f} "
        f"(median of {args.rounds} rounds; goal <= 1.0)", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=2, help="timed steps per block")
  ap.add_argument("--stages", default="mntp,supervised")
  args = parse_args(ap)
  c = llm2vec4cxr.get_config("demo")
  model_dir = assets.path("smollm2")
  wrapper = resolve_wrapper(c.text.wrapper, hf.read_config(model_dir).get("_name_or_path", ""))
  print(f"jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}; "
        f"SmolLM2 first {c.num_layers} layers, finetune {c.finetune}, fp32", flush=True)
  for stage in args.stages.split(","):
    bench(c, stage, model_dir, wrapper, args)
    gc.collect()  # the previous stage's JAX buffers and torch model go before the next builds


if __name__ == "__main__":
  main()
