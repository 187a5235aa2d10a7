"""LLM2CLIP dual tower: a ViT, an LLM text side and adapters into one embedding space.

Params: {"vision_model": ..., "visual_projection": ..., "text_adapter": ..., "logit_scale": (),
"logit_bias": () (SigLIP only), "text_encoder": {"model": ..., ...} (text_mode lora/full only)}.
With text_mode="cached" there is no text encoder in the model at all: the batch carries the frozen
LLM's pooled embedding of each report, and only the adapter is trained on it.

Two similarity modes:
  standard: L2-normalized features x exp(t) (CLIP).
  paper:    unnormalized features x t, as the released LLM2CLIP4CXR training code computes (no
            normalization, no exp).
In both, t (the `logit_scale` param) is kept in [0, ln 100] by clamping the *parameter* after each
optimizer step (`clamp_log_scale`, as the released code's `clamp_`), never inside the forward pass:
a clip there has zero gradient outside the range, so a scale that left it would be stuck for good
(and in paper mode a scale below 0 would zero every logit and every gradient).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrclip_jax.models.layers import Dense, LayerNorm, param_with_axes
from cxrclip_jax.models.bert import BertConfig, BertTextEncoder
from cxrclip_jax.models.llm_encoder import LlmConfig
from cxrclip_jax.models.text_encoder import TextEncoder
from cxrclip_jax.models.vision import VisionTower, VitConfig

MAX_LOG_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  embed_dim: int = 1280
  text_mode: str = "cached"        # cached | lora | full
  adapter: str = "linear"          # linear: LayerNorm + Linear (LLM2CLIP4CXR); mlp: LLM2CLIP residual MLP
  adapter_hidden: int = 0          # mlp adapter width (0: 4 x embed_dim)
  adapter_blocks: int = 1
  similarity: str = "standard"     # standard | paper
  loss: str = "infonce"            # infonce | siglip
  init_log_scale: float = math.log(1 / 0.07)
  init_bias: float = -10.0         # SigLIP's logit bias init
  text_pooling: str = "mean"
  # Standardize the LLM's pooled embedding per dimension with fixed dataset statistics before the
  # adapter. Raw LLM embeddings are anisotropic (SmolLM2's mean-pooled reports: mean cosine 0.77,
  # two dimensions 10-20x larger than the rest), which stalls contrastive training of a small
  # adapter; the statistics are frozen params (`input_mean`, `input_scale`) set from the cache.
  standardize_text: bool = False
  latent_heads: int = 8
  num_latents: int = 512
  text_normalize: bool = False     # a BERT text side: L2-normalize its pooled output (its pipeline's Normalize)


class TextAdapter(nn.Module):
  """LLM pooled embedding (B, D_text) -> (B, embed_dim).

  linear: LayerNorm -> Linear, the released LLM2CLIP4CXR adapter.
  mlp:    Linear -> n x [x + MLP(LayerNorm(x))] -> LayerNorm, LLM2CLIP's residual MLP adapter.
  """
  config: ClipConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    if c.standardize_text:
      d = x.shape[-1]
      mean = param_with_axes(self, "input_mean", nn.initializers.zeros, (d,), ("norm",))
      scale = param_with_axes(self, "input_scale", nn.initializers.ones, (d,), ("norm",))
      x = (x.astype(jnp.float32) - mean) * scale
    if c.adapter == "linear":
      x = LayerNorm(dtype=self.dtype, name="layer_norm")(x)
      return Dense(c.embed_dim, ("embed", "embed_out"), use_bias=True, dtype=self.dtype, name="linear")(x)
    if c.adapter == "mlp":
      hidden = c.adapter_hidden or 4 * c.embed_dim
      x = Dense(c.embed_dim, ("embed", "embed_out"), use_bias=True, dtype=self.dtype, name="proj_in")(x)
      for i in range(c.adapter_blocks):
        h = LayerNorm(dtype=self.dtype, name=f"blocks_{i}_norm")(x)
        h = Dense(hidden, ("embed_out", "mlp"), use_bias=True, dtype=self.dtype, name=f"blocks_{i}_fc1")(h)
        h = Dense(c.embed_dim, ("mlp", "embed_out"), use_bias=True, dtype=self.dtype,
                  name=f"blocks_{i}_fc2")(nn.gelu(h, approximate=False))
        x = x + h
      return LayerNorm(dtype=self.dtype, name="norm_out")(x)
    raise ValueError(f"unknown adapter {c.adapter!r} (linear | mlp)")


def text_inputs(batch: dict) -> dict:
  """The text side of a batch: cached embeddings, or the token arrays of the online encoder."""
  if "text_emb" in batch:
    return {"text_emb": batch["text_emb"]}
  return {k: batch[k] for k in ("input_ids", "attention_mask", "embed_mask")}


def logit_scale(log_scale: jax.Array, mode: str) -> jax.Array:
  """The multiplier applied to feature dot products (1 / temperature); unclamped (see above)."""
  if mode == "standard":
    return jnp.exp(log_scale)
  if mode == "paper":
    return log_scale
  raise ValueError(f"unknown similarity mode {mode!r} (standard | paper)")


def clamp_log_scale(log_scale: jax.Array) -> jax.Array:
  """The parameter's range, applied after each update: [0, ln 100]."""
  return jnp.clip(log_scale, 0.0, MAX_LOG_SCALE)


def similarity(image: jax.Array, text: jax.Array, log_scale: jax.Array, bias: jax.Array | None,
               mode: str) -> jax.Array:
  """Image->text logits (Bi, Bt) from features and the learned temperature (and bias)."""
  image, text = image.astype(jnp.float32), text.astype(jnp.float32)
  if mode == "standard":
    norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    image, text = norm(image), norm(text)
  logits = image @ text.T * logit_scale(log_scale, mode)
  return logits if bias is None else logits + bias


class DualTower(nn.Module):
  vision: VitConfig
  clip: ClipConfig
  text: LlmConfig | BertConfig | None = None  # needed for text_mode lora/full; cached mode sees only embeddings
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.clip
    self.vision_model = VisionTower(self.vision)
    self.visual_projection = Dense(c.embed_dim, ("embed", "embed_out"), dtype=self.dtype)
    if c.text_mode in ("lora", "full"):
      if self.text is None:
        raise ValueError(f"text_mode={c.text_mode!r} needs the LLM config")
      if isinstance(self.text, BertConfig):  # text.family=bert: a sentence encoder, as its pipeline pools
        self.text_encoder = BertTextEncoder(self.text, pooling=c.text_pooling, normalize=c.text_normalize)
      else:
        self.text_encoder = TextEncoder(self.text, pooling=c.text_pooling, num_latents=c.num_latents,
                                        latent_heads=c.latent_heads)
    elif c.text_mode != "cached":
      raise ValueError(f"unknown text_mode {c.text_mode!r} (cached | lora | full)")
    self.text_adapter = TextAdapter(c, self.dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.init_log_scale), ())
    if c.loss == "siglip":
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(c.init_bias), ())

  def encode_image(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    pooled, _ = self.vision_model(images, deterministic=deterministic)
    return self.visual_projection(pooled)

  def encode_text(self, text: dict, deterministic: bool = True) -> jax.Array:
    """text: {"text_emb": (B, D_text)} when cached, else {"input_ids", "attention_mask", "embed_mask"}."""
    if self.clip.text_mode == "cached":
      pooled = text["text_emb"]
    else:
      pooled = self.text_encoder(text["input_ids"], text["attention_mask"], text["embed_mask"], deterministic)
    return self.text_adapter(pooled)

  def __call__(self, images: jax.Array, text: dict, deterministic: bool = True):
    """Returns (image features (B, E), text features (B, E), logits (B, B))."""
    img = self.encode_image(images, deterministic)
    txt = self.encode_text(text, deterministic)
    return img, txt, self.logits(img, txt)

  def logits(self, img: jax.Array, txt: jax.Array) -> jax.Array:
    bias = self.logit_bias if self.clip.loss == "siglip" else None
    return similarity(img, txt, self.logit_scale, bias, self.clip.similarity)

  def adapt_text(self, pooled: jax.Array) -> jax.Array:
    """Adapter only: for evaluation on precomputed (cached) LLM embeddings in any text mode."""
    return self.text_adapter(pooled)
