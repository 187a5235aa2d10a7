"""HF CLIP / SigLIP / DINOv2 vision checkpoints <-> VisionTower params, through explicit key tables.

Reads `CLIPVisionModel`, `SiglipVisionModel` (keys bare, as transformers 5 writes them, or under
`vision_model.`, as 4.x and the hub do) and `Dinov2Model` directories, and full `CLIPModel` /
`SiglipModel` checkpoints, whose text tower, projections and logit scale/bias are declared
optional keys (reported, never silently dropped). Writes directories that
`transformers.AutoModel.from_pretrained` loads with no missing or unexpected keys. Safetensors
only; pickle is never read.

Position embeddings are resized once, in numpy, when the requested image size differs from the
checkpoint's: bicubic as torch computes it (a = -0.75, align_corners=False, clamped borders), the
CLS position untouched, which is what HF's `interpolate_pos_encoding=True` does at every forward.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from cxrclip_jax.export import hf as hf_io
from cxrclip_jax.export import keymap, safetensors_io
from cxrclip_jax.models.vision import VisionTower, VitConfig


def _linear(hf: str, fx: str) -> tuple[keymap.Row, ...]:
  return ((f"{hf}.weight", f"{fx}/kernel", True), (f"{hf}.bias", f"{fx}/bias", False))


def _norm(hf: str, fx: str) -> tuple[keymap.Row, ...]:
  return ((f"{hf}.weight", f"{fx}/weight", False), (f"{hf}.bias", f"{fx}/bias", False))


def _blocks(hf_block: str, names: dict[str, str]) -> tuple[keymap.Row, ...]:
  """Rows for every encoder block; `names` maps our sublayer to HF's (`{i}` is the layer index)."""
  rows = []
  for ours, theirs in names.items():
    make = _norm if "norm" in ours else _linear
    rows += make(f"{hf_block}.{theirs}", f"encoder/layers_{{i}}/{ours}")
  return tuple(rows)


_SUBLAYERS = {"layer_norm1": "layer_norm1", "self_attn/q_proj": "self_attn.q_proj",
              "self_attn/k_proj": "self_attn.k_proj", "self_attn/v_proj": "self_attn.v_proj",
              "self_attn/out_proj": "self_attn.out_proj", "layer_norm2": "layer_norm2",
              "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_DINOV2_SUBLAYERS = {"layer_norm1": "norm1", "self_attn/q_proj": "attention.attention.query",
                     "self_attn/k_proj": "attention.attention.key", "self_attn/v_proj": "attention.attention.value",
                     "self_attn/out_proj": "attention.output.dense", "layer_norm2": "norm2",
                     "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}

# HF key (without the `vision_model.` prefix) -> Flax path. Conv weights are OIHW in HF and HWIO
# here; the table's transpose reverses all axes, so `_swap_hw` swaps H and W around it.
CLIP_KEYS: tuple[keymap.Row, ...] = (
    ("embeddings.class_embedding", "embeddings/class_embedding", False),
    ("embeddings.patch_embedding.weight", "embeddings/patch_embedding/kernel", True),
    ("embeddings.position_embedding.weight", "embeddings/position_embedding/weight", False),
    *_norm("pre_layrnorm", "pre_layrnorm"),
    *_blocks("encoder.layers.{i}", _SUBLAYERS),
    *_norm("post_layernorm", "post_layernorm"),
)
SIGLIP_KEYS: tuple[keymap.Row, ...] = (
    ("embeddings.patch_embedding.weight", "embeddings/patch_embedding/kernel", True),
    ("embeddings.patch_embedding.bias", "embeddings/patch_embedding/bias", False),
    ("embeddings.position_embedding.weight", "embeddings/position_embedding/weight", False),
    *_blocks("encoder.layers.{i}", _SUBLAYERS),
    *_norm("post_layernorm", "post_layernorm"),
    ("head.probe", "head/probe", False),
    ("head.attention.in_proj_weight", "head/attention/in_proj_weight", False),
    ("head.attention.in_proj_bias", "head/attention/in_proj_bias", False),
    *_linear("head.attention.out_proj", "head/attention/out_proj"),
    *_norm("head.layernorm", "head/layernorm"),
    *_linear("head.mlp.fc1", "head/mlp/fc1"),
    *_linear("head.mlp.fc2", "head/mlp/fc2"),
)
DINOV2_KEYS: tuple[keymap.Row, ...] = (
    ("embeddings.cls_token", "embeddings/cls_token", False),
    ("embeddings.mask_token", "embeddings/mask_token", False),
    ("embeddings.patch_embeddings.projection.weight", "embeddings/patch_embedding/kernel", True),
    ("embeddings.patch_embeddings.projection.bias", "embeddings/patch_embedding/bias", False),
    ("embeddings.position_embeddings", "embeddings/position_embeddings", False),
    *_blocks("encoder.layer.{i}", _DINOV2_SUBLAYERS),
    ("encoder.layer.{i}.layer_scale1.lambda1", "encoder/layers_{i}/layer_scale1", False),
    ("encoder.layer.{i}.layer_scale2.lambda1", "encoder/layers_{i}/layer_scale2", False),
    *_norm("layernorm", "layernorm"),
)
KEYS = {"clip": CLIP_KEYS, "siglip": SIGLIP_KEYS, "dinov2": DINOV2_KEYS}
_POSITIONS = {"clip": "embeddings.position_embedding.weight", "siglip": "embeddings.position_embedding.weight",
              "dinov2": "embeddings.position_embeddings"}
_CONV = ("embeddings.patch_embedding.weight", "embeddings.patch_embeddings.projection.weight")
# The rest of a full CLIPModel / SiglipModel checkpoint: not part of the vision tower.
FULL_MODEL_OPTIONAL = (r"text_model\..*", r"text_projection\.weight", r"visual_projection\.weight",
                       r"logit_scale", r"logit_bias")
VISION_PREFIX = "vision_model."


def table(family: str, prefix: str = "") -> tuple[keymap.Row, ...]:
  return tuple((prefix + h, f, t) for h, f, t in KEYS[family])


def _swap_hw(tensors: dict, prefix: str) -> dict:
  return {k: (np.swapaxes(v, 2, 3) if k in {prefix + c for c in _CONV} else v) for k, v in tensors.items()}


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) weights of torch's 1-D bicubic resize (align_corners=False, indices clamped)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src)
  t = src - base
  cubic_near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1       # |x| <= 1
  cubic_far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  weights = (cubic_far(t + 1), cubic_near(t), cubic_near(1 - t), cubic_far(2 - t))
  m = np.zeros((n_out, n_in))
  for k, w in enumerate(weights):
    np.add.at(m, (np.arange(n_out), np.clip(base.astype(int) - 1 + k, 0, n_in - 1)), w)
  return m


def resize_positions(pos: np.ndarray, num_prefix: int, grid: int, key: str = "position embedding") -> np.ndarray:
  """(..., num_prefix + G*G, D) -> (..., num_prefix + grid*grid, D); the prefix (CLS) rows kept."""
  n, d = pos.shape[-2:]
  old = math.isqrt(n - num_prefix)
  if old * old != n - num_prefix:
    raise keymap.KeyMismatchError(f"HF key {key!r} has {n} positions: not {num_prefix} + a square grid")
  if old == grid:
    return pos
  m = bicubic_matrix(old, grid)
  patches = np.asarray(pos[..., num_prefix:, :], np.float64).reshape(*pos.shape[:-2], old, old, d)
  resized = np.einsum("oh,...hwd,pw->...opd", m, patches, m).reshape(*pos.shape[:-2], grid * grid, d)
  return np.concatenate([pos[..., :num_prefix, :], resized.astype(pos.dtype)], axis=-2)


def _dummy_images(config: VitConfig):
  return (jnp.zeros((1, config.image_size, config.image_size, config.num_channels)),)


def load_vision_tower(model_dir, image_size: int | None = None, pooling: str | None = None,
                      dtype: str = "float32", remat: bool = False) -> tuple[VisionTower, dict]:
  """(VisionTower, numpy params) from an HF directory; raises naming any missing/unused/mis-shaped key.

  image_size: resolution to run at (default: the checkpoint's); position embeddings are resized.
  pooling: "cls" / "map" / "mean" (default: the source model's pooler).
  """
  overrides = dict(dtype=dtype, remat=remat, **({"pooling": pooling} if pooling else {}))
  config = VitConfig.from_hf(hf_io.read_config(model_dir), **overrides)
  if image_size is not None:
    config = dataclasses.replace(config, image_size=image_size)
  tensors = dict(hf_io.read_weights(model_dir))
  prefix = VISION_PREFIX if any(k.startswith(VISION_PREFIX) for k in tensors) else ""
  if config.pooling == "map" and prefix + "head.probe" not in tensors:
    raise keymap.KeyMismatchError(f"pooling 'map' needs an attention-pool head ('{prefix}head.*'); "
                                  f"{model_dir} has none: use pooling 'cls' or 'mean'")
  optional = [re.escape(prefix) + r"head\..*"] if config.family == "siglip" and config.pooling != "map" else []
  if prefix:
    optional += FULL_MODEL_OPTIONAL
  pos_key = prefix + _POSITIONS[config.family]
  if pos_key in tensors:
    tensors[pos_key] = resize_positions(tensors[pos_key], int(config.has_cls), config.grid, pos_key)
  module = VisionTower(config)
  shapes = hf_io.abstract_shapes(module, *_dummy_images(config))
  params, ignored = keymap.to_flax(_swap_hw(tensors, prefix), table(config.family, prefix), shapes,
                                   optional=optional)
  if ignored:
    logging.info("%s: %d checkpoint keys outside the vision tower left unused (%s, ...)",
                 model_dir, len(ignored), ignored[0])
  return module, params


def save_vision_tower(out_dir, config: VitConfig, params) -> pathlib.Path:
  """Writes an HF directory (config.json + model.safetensors in the params' dtype) for the family's
  VisionModel class. CLIP/SigLIP keys go under `vision_model.`, which transformers 4.x and 5.x load."""
  if config.pooling == "map" and config.family != "siglip":
    raise ValueError(f"an attention-pool head on a {config.family} tower has no HF equivalent")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  prefix = "" if config.family == "dinov2" else VISION_PREFIX
  tensors = _swap_hw(keymap.to_hf(jax.device_get(params), table(config.family, prefix)), prefix)
  safetensors_io.write(out_dir / "model.safetensors", tensors, {"format": "pt"})
  dtype = str(next(iter(tensors.values())).dtype)
  hf = dict(config.to_hf(), torch_dtype=dtype, dtype=dtype)
  (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  return out_dir
