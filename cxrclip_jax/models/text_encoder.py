"""LLM2Vec-style text encoder: an `LlmModel` (usually bidirectional) followed by pooling.

Params: {"model": <HF LlamaModel/Qwen2Model/MistralModel tree>, "latent_attn": {...} (latent
attention only)}. The `model` subtree is the same as in `LlmForMNTP`, so MNTP-adapted weights move
into the encoder as they are.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from cxrclip_jax.models import pooling as pooling_lib
from cxrclip_jax.models.llm_encoder import LlmConfig, LlmModel


class TextEncoder(nn.Module):
  config: LlmConfig
  pooling: str = "mean"
  num_latents: int = 512
  latent_heads: int = 8

  def setup(self):
    if self.pooling not in pooling_lib.POOLING_MODES:
      raise ValueError(f"unknown pooling mode {self.pooling!r}; known: {', '.join(pooling_lib.POOLING_MODES)}")
    self.model = LlmModel(self.config)
    if self.pooling == "latent_attention":
      self.latent_attn = pooling_lib.LatentAttention(self.num_latents, self.latent_heads,
                                                     self.config.compute_dtype)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, embed_mask: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """(B, L) ids and masks -> (B, D) float32 pooled embeddings (not normalized)."""
    hidden = self.model(input_ids, attention_mask, deterministic)
    if self.pooling == "latent_attention":
      return self.latent_attn(hidden, embed_mask)
    return pooling_lib.pool(self.pooling, hidden, embed_mask, attention_mask=attention_mask,
                            input_ids=input_ids, bos_token_id=self.config.bos_token_id)
