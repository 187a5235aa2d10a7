"""ViT vision towers (CLIP, SigLIP, DINOv2) as one Flax module with config switches.

Images come in NHWC, already normalized by the input pipeline. The param tree mirrors HF so that
`export/vision_hf.py` is a rename + transpose table:

  embeddings/patch_embedding/{kernel (P, P, C, D) HWIO, bias}   bias: SigLIP, DINOv2
  embeddings/class_embedding (D,), embeddings/position_embedding/weight (N, D)   CLIP
  embeddings/position_embedding/weight (N, D)                                    SigLIP
  embeddings/{cls_token (1, 1, D), mask_token (1, D), position_embeddings (1, N, D)}   DINOv2
  pre_layrnorm (CLIP), encoder/layers_{i}/..., post_layernorm (CLIP, SigLIP) | layernorm (DINOv2)
  head/{probe, attention/{in_proj_weight, in_proj_bias, out_proj}, layernorm, mlp}   "map" pooling

The blocks use one naming for all families (`layer_norm1`, `self_attn/{q,k,v,out}_proj`,
`layer_norm2`, `mlp/fc1|fc2`, and DINOv2's `layer_scale1|2`), so freezing and layer-wise lr decay
are one regex (`encoder/layers_(\\d+)/`) whatever the source model.

Position embeddings have a fixed grid (`image_size // patch_size`); a checkpoint is resized to
another resolution once, at load time (`vision_hf.load_vision_tower(image_size=...)`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrclip_jax.models.layers import (ATTENTION_IMPLS, Dense, LayerNorm, constrain, dot_product_attention, matmul,
                                       param_with_axes)

FAMILIES = ("clip", "siglip", "dinov2")
POOLINGS = ("cls", "map", "mean")
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}
# HF's defaults per family: nested vision_config dicts may hold only the non-default fields.
_HF_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6, vision_use_head=True),
    "dinov2": dict(hidden_size=768, mlp_ratio=4, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
                   image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
                   layerscale_value=1.0, use_mask_token=True, use_swiglu_ffn=False),
}
_FAMILY_OF = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip",
              "dinov2": "dinov2"}
_ACT = ("act_batch", "act_len", "act_embed")


@dataclasses.dataclass(frozen=True)
class VitConfig:
  """Architecture (HF fields) plus run-time switches.

  The defaults describe a small from-scratch SigLIP-style ViT/16 at 128 px with mean pooling
  (which trains better than a CLS token on small data); the demo config (configs/llm2clip.py)
  narrows it further for a 2-core CPU.
  """
  family: str = "siglip"
  image_size: int = 128
  patch_size: int = 16
  num_channels: int = 3
  hidden_size: int = 192
  intermediate_size: int = 768
  num_hidden_layers: int = 6
  num_attention_heads: int = 3
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True            # DINOv2 option; CLIP and SigLIP always have q/k/v biases
  layerscale_value: float = 1.0    # DINOv2 layer-scale init
  use_mask_token: bool = True      # DINOv2: a `mask_token` replaces patches where `patch_mask` is set
  pooling: str = "mean"
  # Run-time switches, not part of the HF config.
  dtype: str = "float32"
  remat: bool = False
  dropout_rate: float = 0.0        # on each residual branch
  drop_path_rate: float = 0.0      # stochastic depth, rising linearly to this at the last layer
  attention_impl: str = "xla"      # xla | cudnn: the encoder blocks' attention (layers.dot_product_attention)

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"unknown vision family {self.family!r}; known: {', '.join(FAMILIES)}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown vision pooling {self.pooling!r}; known: {', '.join(POOLINGS)}")
    if self.pooling == "cls" and not self.has_cls:
      raise ValueError("SigLIP towers have no CLS token: use pooling 'map' or 'mean'")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"unknown attention_impl {self.attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "VitConfig":
    """From an HF config.json: CLIPVision/CLIP, SiglipVision/Siglip (their vision_config), Dinov2."""
    family = _FAMILY_OF.get(hf.get("model_type"))
    if family is None:
      raise ValueError(f"unsupported vision model_type {hf.get('model_type')!r}; supported: {', '.join(_FAMILY_OF)}")
    if hf["model_type"] in ("clip", "siglip"):
      hf = hf.get("vision_config") or {}
    h = {**_HF_DEFAULTS[family], **{k: v for k, v in hf.items() if v is not None}}
    if not isinstance(h["image_size"], int) or not isinstance(h["patch_size"], int):
      raise ValueError(f"only square images and patches are supported, got {h['image_size']} / {h['patch_size']}")
    if family == "dinov2":
      if h["use_swiglu_ffn"]:
        raise ValueError("DINOv2 with a SwiGLU MLP (ViT-g) is not supported")
      inter, pooling = int(h["hidden_size"] * h["mlp_ratio"]), "cls"
    else:
      inter = h["intermediate_size"]
      pooling = "cls" if family == "clip" else ("map" if h["vision_use_head"] else "mean")
    kw = dict(family=family, image_size=h["image_size"], patch_size=h["patch_size"], num_channels=h["num_channels"],
              hidden_size=h["hidden_size"], intermediate_size=inter, num_hidden_layers=h["num_hidden_layers"],
              num_attention_heads=h["num_attention_heads"], hidden_act=h["hidden_act"],
              layer_norm_eps=h["layer_norm_eps"], qkv_bias=bool(h.get("qkv_bias", True)),
              layerscale_value=float(h.get("layerscale_value", 1.0)),
              use_mask_token=bool(h.get("use_mask_token", False)), pooling=pooling)
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """config.json of the family's HF vision model (CLIPVisionModel, SiglipVisionModel, Dinov2Model)."""
    hf = dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
              num_attention_heads=self.num_attention_heads, num_channels=self.num_channels,
              image_size=self.image_size, patch_size=self.patch_size, hidden_act=self.hidden_act,
              layer_norm_eps=self.layer_norm_eps)
    if self.family == "dinov2":
      if self.intermediate_size % self.hidden_size:  # transformers 5 validates mlp_ratio as an int
        raise ValueError(f"DINOv2 needs intermediate_size a multiple of hidden_size, got {self.intermediate_size}")
      return dict(hf, architectures=["Dinov2Model"], model_type="dinov2",
                  mlp_ratio=self.intermediate_size // self.hidden_size, qkv_bias=self.qkv_bias,
                  layerscale_value=self.layerscale_value, use_mask_token=self.use_mask_token,
                  use_swiglu_ffn=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  drop_path_rate=0.0)
    hf.update(intermediate_size=self.intermediate_size, attention_dropout=0.0)
    if self.family == "clip":
      return dict(hf, architectures=["CLIPVisionModel"], model_type="clip_vision_model")
    return dict(hf, architectures=["SiglipVisionModel"], model_type="siglip_vision_model",
                vision_use_head=self.pooling == "map")

  @property
  def has_cls(self) -> bool:
    return self.family != "siglip"

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid ** 2 + int(self.has_cls)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


class Table(nn.Module):
  """A bare param under torch nn.Embedding's name (`<module>/weight`)."""
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]

  @nn.compact
  def __call__(self) -> jax.Array:
    return param_with_axes(self, "weight", nn.initializers.normal(0.02), self.shape, self.axes)


class PatchEmbedding(nn.Module):
  """Conv2d(kernel = stride = P) as a reshape + matmul: (B, H, W, C) -> (B, H/P * W/P, D), row-major."""
  features: int
  patch_size: int
  use_bias: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    b, h, w, c = images.shape
    p = self.patch_size
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1, 2), out_axis=3)
    kernel = param_with_axes(self, "kernel", init, (p, p, c, self.features), ("patch", "patch", None, "embed"))
    x = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = matmul(x.reshape(b, (h // p) * (w // p), p * p * c), kernel.astype(self.dtype).reshape(-1, self.features))
    if self.use_bias:
      x = x + param_with_axes(self, "bias", nn.initializers.zeros, (self.features,), ("embed",)).astype(self.dtype)
    return x  # (B, H/P * W/P, D)


class Embeddings(nn.Module):
  """Patches (+ CLS) + learned positions: (B, H, W, C) -> (B, N, D)."""
  config: VitConfig

  @nn.compact
  def __call__(self, images: jax.Array, patch_mask: jax.Array | None = None) -> jax.Array:
    c, d = self.config, self.config.hidden_size
    if images.shape[1:] != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(f"images of shape {images.shape[1:]} given to a tower built for "
                       f"{(c.image_size, c.image_size, c.num_channels)}; load the checkpoint with "
                       f"image_size={images.shape[1]} to resize its position embeddings")
    if patch_mask is not None and not (c.family == "dinov2" and c.use_mask_token):
      raise ValueError("patch_mask needs a DINOv2 tower with use_mask_token")
    x = PatchEmbedding(d, c.patch_size, c.family != "clip", c.compute_dtype, name="patch_embedding")(images)
    b = x.shape[0]
    if c.family == "dinov2":
      if c.use_mask_token:
        token = param_with_axes(self, "mask_token", nn.initializers.zeros, (1, d), (None, "embed"))
        if patch_mask is not None:  # (B, G*G) bool: masked-image modelling, as HF's bool_masked_pos
          x = jnp.where(patch_mask[..., None], token.astype(x.dtype), x)
      cls = param_with_axes(self, "cls_token", nn.initializers.normal(0.02), (1, 1, d), (None, None, "embed"))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
      pos = param_with_axes(self, "position_embeddings", nn.initializers.normal(0.02), (1, c.num_positions, d),
                            (None, "pos", "embed"))[0]
    else:
      if c.family == "clip":
        cls = param_with_axes(self, "class_embedding", nn.initializers.normal(0.02), (d,), ("embed",))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
      pos = Table((c.num_positions, d), ("pos", "embed"), name="position_embedding")()
    return x + pos.astype(x.dtype)  # (B, N, D)


class Attention(nn.Module):
  config: VitConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    n = c.num_attention_heads
    h = c.hidden_size // n
    b, l, _ = x.shape
    dense = lambda axes, bias, name: Dense(c.hidden_size, axes, use_bias=bias, dtype=c.compute_dtype, name=name)
    q, k, v = (dense(("embed", "heads"), c.qkv_bias, name)(x).reshape(b, l, n, h)
               for name in ("q_proj", "k_proj", "v_proj"))
    out = dot_product_attention(q, k, v, None, c.attention_impl)  # (B, L, N, H); scale 1/sqrt(H), no mask
    out = constrain(out.reshape(b, l, n * h), ("act_batch", "act_len", "act_heads"))
    return dense(("heads", "embed"), True, "out_proj")(out)


class Mlp(nn.Module):
  config: VitConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    x = Dense(c.intermediate_size, ("embed", "mlp"), use_bias=True, dtype=c.compute_dtype, name="fc1")(x)
    x = constrain(ACTIVATIONS[c.hidden_act](x), ("act_batch", "act_len", "act_mlp"))
    return Dense(c.hidden_size, ("mlp", "embed"), use_bias=True, dtype=c.compute_dtype, name="fc2")(x)


class EncoderLayer(nn.Module):
  """Pre-LN block; DINOv2 scales each branch by a learned per-channel `layer_scale`."""
  config: VitConfig
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    c = self.config
    norm = lambda name: LayerNorm(c.layer_norm_eps, c.compute_dtype, name=name)

    def residual(y, scale_name):
      if c.family == "dinov2":
        scale = param_with_axes(self, scale_name, nn.initializers.constant(c.layerscale_value), (c.hidden_size,),
                                ("norm",))
        y = y * scale.astype(y.dtype)
      y = nn.Dropout(c.dropout_rate)(y, deterministic)
      return nn.Dropout(self.drop_path, broadcast_dims=(1, 2))(y, deterministic)  # whole examples

    x = x + residual(Attention(c, name="self_attn")(norm("layer_norm1")(x)), "layer_scale1")
    x = x + residual(Mlp(c, name="mlp")(norm("layer_norm2")(x)), "layer_scale2")
    return constrain(x, _ACT)


class Encoder(nn.Module):
  config: VitConfig

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    c = self.config
    layer = nn.remat(EncoderLayer, static_argnums=(2,)) if c.remat else EncoderLayer
    for i in range(c.num_hidden_layers):
      rate = c.drop_path_rate * i / max(c.num_hidden_layers - 1, 1)
      x = layer(c, rate, name=f"layers_{i}")(x, deterministic)
    return x


class ProbeAttention(nn.Module):
  """torch nn.MultiheadAttention (torch names; `in_proj_weight` (3D, D) kept in torch layout) with
  one learned query shared by the batch: probe (1, 1, D), x (B, N, D) -> (B, 1, D)."""
  config: VitConfig

  @nn.compact
  def __call__(self, probe: jax.Array, x: jax.Array) -> jax.Array:
    c, d = self.config, self.config.hidden_size
    n, dt = c.num_attention_heads, c.compute_dtype
    w = param_with_axes(self, "in_proj_weight", nn.initializers.xavier_uniform(), (3 * d, d), ("qkv", "embed"))
    bias = param_with_axes(self, "in_proj_bias", nn.initializers.zeros, (3 * d,), ("qkv",))
    w, bias, x = w.astype(dt), bias.astype(dt), x.astype(dt)
    b, l, _ = x.shape
    q = matmul(probe.astype(dt), w[:d].T) + bias[:d]
    q = jnp.broadcast_to(q.reshape(1, 1, n, d // n), (b, 1, n, d // n))
    k = (matmul(x, w[d:2 * d].T) + bias[d:2 * d]).reshape(b, l, n, d // n)
    v = (matmul(x, w[2 * d:].T) + bias[2 * d:]).reshape(b, l, n, d // n)
    out = jax.nn.dot_product_attention(q, k, v).reshape(b, 1, d)
    return Dense(d, ("heads", "embed"), use_bias=True, dtype=dt, name="out_proj")(out)


class MapHead(nn.Module):
  """SigLIP's multihead attention pooling: attention from a learned probe, then a residual MLP."""
  config: VitConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    probe = param_with_axes(self, "probe", nn.initializers.normal(0.02), (1, 1, c.hidden_size), (None, None, "embed"))
    x = ProbeAttention(c, name="attention")(probe, x)  # (B, 1, D)
    x = x + Mlp(c, name="mlp")(LayerNorm(c.layer_norm_eps, c.compute_dtype, name="layernorm")(x))
    return x[:, 0]


class VisionTower(nn.Module):
  """images (B, H, W, C) -> (pooled (B, D) float32, tokens (B, N, D) compute dtype).

  `tokens` is HF's last_hidden_state: CLS first where the family has one; before
  `post_layernorm` for CLIP, after the final norm for SigLIP and DINOv2. Pooling reads the
  final-normed tokens: "cls" the CLS token (HF's pooler_output for CLIP and DINOv2), "map" the
  attention-pool head (SigLIP's pooler_output), "mean" the mean over patch tokens (CLS excluded).
  """
  config: VitConfig

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True,
               patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    c = self.config
    norm = lambda name: LayerNorm(c.layer_norm_eps, c.compute_dtype, name=name)
    x = Embeddings(c, name="embeddings")(images, patch_mask)
    if c.family == "clip":
      x = norm("pre_layrnorm")(x)
    x = Encoder(c, name="encoder")(constrain(x, _ACT), deterministic)  # (B, N, D)
    if c.family == "clip":
      tokens, normed = x, norm("post_layernorm")(x)
    else:
      tokens = normed = norm("post_layernorm" if c.family == "siglip" else "layernorm")(x)
    if c.pooling == "cls":
      pooled = normed[:, 0]
    elif c.pooling == "map":
      pooled = MapHead(c, name="head")(normed)
    else:
      pooled = jnp.mean(normed[:, int(c.has_cls):].astype(jnp.float32), axis=1)
    return pooled.astype(jnp.float32), tokens
