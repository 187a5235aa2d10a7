"""Optax builder: AdamW with warmup + cosine, clipping, and regex param groups.

Param groups are config data: a list of (regex, options) matched against "/"-joined param paths,
first match wins. Options: `frozen` (no gradient is even computed: the step differentiates only
the trainable subtree), `lr_mult`, `wd` (weight decay override). Biases, norms and scalars get no
weight decay unless a group says otherwise. Layer-wise lr decay scales a tower's layer i of n by
decay^(n - i) (embeddings: layer 0, everything after the blocks: layer n + 1).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import optax
from flax import traverse_util


def path_of(key: tuple) -> str:
  return "/".join(str(k) for k in key)


def _group(path: str, groups: Sequence[tuple[str, Mapping[str, Any]]]) -> Mapping[str, Any]:
  for pattern, options in groups:
    if re.search(pattern, path):
      return options
  return {}


def trainable_mask(params, groups) -> dict:
  """Nested bool tree: True where the param is trained."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: not _group(path_of(k), groups).get("frozen", False) for k in flat})


def _layer_id(path: str, layer_decay: Mapping[str, Any]) -> float | None:
  """Position of a param inside a decayed tower: 0 embeddings, i + 1 block i, n + 1 after."""
  tower = layer_decay.get("tower")
  if not tower or not path.startswith(tower + "/"):
    return None
  m = re.search(r"layers_(\d+)/", path)
  if m:
    return int(m.group(1)) + 1
  if re.search(layer_decay.get("embed_regex", r"embed"), path):
    return 0
  return layer_decay["num_layers"] + 1


def param_labels(params, groups, layer_decay: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
  """Label per trainable param and {label: (lr multiplier, weight decay)}."""
  layer_decay = dict(layer_decay or {})
  flat = traverse_util.flatten_dict(params)
  labels, hyper = {}, {}
  for key, value in flat.items():
    path = path_of(key)
    opts = _group(path, groups)
    if opts.get("frozen", False):
      continue
    no_decay = getattr(value, "ndim", 2) < 2 or re.search(r"(bias|norm|scale|logit_)", path)
    wd = opts.get("wd", 0.0 if no_decay else None)
    mult = float(opts.get("lr_mult", 1.0))
    layer = _layer_id(path, layer_decay) if layer_decay.get("rate", 1.0) != 1.0 else None
    if layer is not None:
      mult *= layer_decay["rate"] ** (layer_decay["num_layers"] + 1 - layer)
    label = f"lr{mult:.6g}_wd{wd}"
    labels[key] = label
    hyper[label] = (mult, wd)
  return traverse_util.unflatten_dict(labels), hyper


def schedule(lr: float, total_steps: int, warmup_steps: int, end_factor: float = 0.0) -> optax.Schedule:
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1),
                                            end_value=lr * end_factor)


def build(trainable_params, *, lr: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.05,
          b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6, grad_clip: float | None = 1.0,
          groups=(), layer_decay: Mapping[str, Any] | None = None
          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW over the trainable subtree, one transform per group; its base lr schedule).

  Steps count optimizer updates (gradient accumulation happens inside the train step, see
  train/step.py), so the schedule returned here is exactly the one every update uses: log it.
  """
  labels, hyper = param_labels(trainable_params, groups, layer_decay)
  base = schedule(lr, total_steps, warmup_steps)
  transforms = {}
  for label, (mult, wd) in hyper.items():
    sched = (lambda s, m=mult: base(s) * m)
    transforms[label] = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay if wd is None else wd)
  tx = optax.multi_transform(transforms, labels)
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx, base
