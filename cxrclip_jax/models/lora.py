"""LoRA with peft's semantics: y = x W + dropout(x) A B (alpha / r), A kaiming-uniform, B zero.

The branch lives next to the frozen kernel (`.../q_proj/lora/a`, `.../q_proj/lora/b`), chosen by a
regex over module paths, so freezing is a param-group regex in the optimizer and export is
`merge`: W + A B (alpha / r), LoRA params dropped.
"""
from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 16
  alpha: float = 32.0
  dropout: float = 0.0
  # Module paths (e.g. "layers_3/self_attn/q_proj") that get a branch; re.search semantics.
  target: str = r"(q_proj|k_proj|v_proj|o_proj)$"

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def targets(self, module_path: str) -> bool:
    return re.search(self.target, module_path) is not None


def _kaiming_uniform_a_sqrt5(key, shape, dtype=jnp.float32):
  # torch's nn.init.kaiming_uniform_(a=sqrt(5)) on a (r, in) weight: bound = 1/sqrt(in).
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoraBranch(nn.Module):
  config: LoraConfig
  features: int
  axes: tuple[str | None, str | None]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    r = self.config.rank
    a = self.param("a", nn.with_logical_partitioning(_kaiming_uniform_a_sqrt5, (self.axes[0], None)),
                   (x.shape[-1], r), jnp.float32)
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, (None, self.axes[1])),
                   (r, self.features), jnp.float32)
    if self.config.dropout > 0:
      x = nn.Dropout(self.config.dropout)(x, deterministic=deterministic)
    # 2D matmuls over flattened tokens, as layers.matmul (which imports this module).
    h = x.reshape(-1, x.shape[-1]).astype(self.dtype) @ a.astype(self.dtype)
    y = (h @ b.astype(self.dtype)) * self.config.scale
    return y.reshape(*x.shape[:-1], self.features)


def merge(params, config: LoraConfig):
  """Folds every `lora` branch into its sibling `kernel`; returns params without LoRA (numpy or jax)."""
  def walk(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: walk(v) for k, v in tree.items() if k != "lora"}
    if "lora" in tree:
      a, b = tree["lora"]["a"], tree["lora"]["b"]
      xp = np if isinstance(out["kernel"], np.ndarray) else jnp
      delta = (xp.asarray(a, xp.float32) @ xp.asarray(b, xp.float32)) * config.scale
      out["kernel"] = (out["kernel"].astype(xp.float32) + delta).astype(out["kernel"].dtype)
    return out
  return walk(dict(params))


def is_lora_path(path: str) -> bool:
  return "/lora/" in f"/{path}/"
