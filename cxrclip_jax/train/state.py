"""Train state and the trainable/frozen split of params.

Only the trainable subtree is differentiated and carried by the optimizer; frozen params (a
frozen LLM, say) ride along untouched, are never checkpointed, and are rebuilt from their source
(HF weights or a seeded init) on resume.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
from flax import traverse_util


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any       # trainable subtree
  opt_state: Any
  rng: jax.Array

  def checkpointed(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "rng": self.rng}


def split(params, mask) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts by a bool tree of the same structure."""
  flat, flat_mask = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen) -> dict:
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)
