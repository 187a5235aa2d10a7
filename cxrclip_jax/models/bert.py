"""BERT-family encoders (HF `BertModel`, e.g. all-MiniLM-L6-v2) with HF parameter names.

The param tree mirrors HF's state dict (`embeddings/word_embeddings/weight`,
`encoder/layer_{i}/attention/self/query/kernel`, ..., `pooler/dense/kernel`), so `export/bert_hf.py`
is one explicit rename + transpose table. Absolute learned positions 0..L-1 (HF's default
`position_ids`, whatever the padding), padding-only attention mask, post-LayerNorm residual blocks.
Params are fp32; `dtype` sets the compute dtype.

`BertTextEncoder` has the call signature of the LLM `TextEncoder` — (ids, attention_mask, embed_mask)
-> (B, D) float32 — so embedding drivers and the CLIP text side can take either.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models import pooling as pooling_lib
from cxrclip_jax.models.layers import Dense, LayerNorm, constrain
from cxrclip_jax.models.llm_encoder import Embed
from cxrclip_jax.models.vision import ACTIVATIONS as _VIT_ACTIVATIONS
from cxrclip_jax.models.vision import Table

# HF's ACT2FN names a BERT config may use. "gelu" is the exact (erf) GELU; "gelu_new",
# "gelu_pytorch_tanh" and "gelu_fast" are the same tanh approximation written three ways.
ACTIVATIONS = {
    **_VIT_ACTIVATIONS,
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
BERT_POOLING_MODES = ("mean", "cls")
_ACT = ("act_batch", "act_len", "act_embed")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """HF `BertConfig` fields we use, plus run-time switches (pooler, dtype, remat, lora)."""
  vocab_size: int = 30522
  hidden_size: int = 64
  num_hidden_layers: int = 2
  num_attention_heads: int = 4
  intermediate_size: int = 128
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pad_token_id: int = 0
  # Run-time switches, not part of the HF config.
  add_pooling_layer: bool = True  # HF `BertModel(add_pooling_layer=...)`: dense + tanh on [CLS]
  dtype: str = "float32"
  remat: bool = False
  lora: lora_lib.LoraConfig | None = None

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "BertConfig":
    if hf.get("model_type") != "bert":
      raise ValueError(f"unsupported model_type {hf.get('model_type')!r}; a BertModel config has 'bert'")
    # transformers 5 dropped relative position types; 4.x checkpoints may still name one.
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(f"unsupported position_embedding_type {position_type!r} (only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
      raise ValueError("a decoder / cross-attention BERT is not a text encoder")
    kw = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        hidden_act=hf.get("hidden_act", "gelu"), max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=hf.get("pad_token_id") or 0)
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """config.json fields, readable by transformers 4.x and 5.x alike."""
    return dict(
        architectures=["BertModel"], model_type="bert", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
        intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
        max_position_embeddings=self.max_position_embeddings, type_vocab_size=self.type_vocab_size,
        layer_norm_eps=self.layer_norm_eps, hidden_dropout_prob=self.hidden_dropout_prob,
        attention_probs_dropout_prob=self.attention_probs_dropout_prob, pad_token_id=self.pad_token_id,
        position_embedding_type="absolute")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def _dense(c: BertConfig, features: int, axes, name: str) -> Dense:
  return Dense(features, axes, use_bias=True, dtype=c.compute_dtype, lora=c.lora, name=name)


class Embeddings(nn.Module):
  """word + position + token-type tables -> LayerNorm -> dropout: (B, L) -> (B, L, D)."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool = True):
    c, d = self.config, self.config.hidden_size
    l = input_ids.shape[1]
    if l > c.max_position_embeddings:  # fail naming the limit, not with a broadcast error below
      raise ValueError(f"sequence length {l} exceeds max_position_embeddings {c.max_position_embeddings}")
    x = Embed(c.vocab_size, d, c.compute_dtype, name="word_embeddings")(input_ids)
    positions = Table((c.max_position_embeddings, d), ("pos", "embed"), name="position_embeddings")()
    types = Table((c.type_vocab_size, d), (None, "embed"), name="token_type_embeddings")()
    x = x + positions[:l].astype(x.dtype) + jnp.take(types, token_type_ids, axis=0).astype(x.dtype)
    x = LayerNorm(c.layer_norm_eps, c.compute_dtype, name="LayerNorm")(x)
    return constrain(nn.Dropout(c.hidden_dropout_prob)(x, deterministic), _ACT)


class SelfAttention(nn.Module):
  """HF BertSelfAttention: q, k, v projections and softmax(q k^T / sqrt(H)) v over real keys."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    c = self.config
    b, l, _ = x.shape
    n, h = c.num_attention_heads, c.head_dim
    q, k, v = (_dense(c, c.hidden_size, ("embed", "heads"), name)(x, deterministic).reshape(b, l, n, h)
               for name in ("query", "key", "value"))
    rate = c.attention_probs_dropout_prob
    if deterministic or rate == 0.0:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # (B, L, N, H); may use a fused kernel
    else:
      # Dropout on the attention probabilities needs them materialized; the fused path has no hook.
      logits = jnp.einsum("blnh,bmnh->bnlm", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(h)
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      probs = nn.Dropout(rate)(jax.nn.softmax(logits, axis=-1), deterministic).astype(v.dtype)
      out = jnp.einsum("bnlm,bmnh->blnh", probs, v)
    return constrain(out.reshape(b, l, n * h), ("act_batch", "act_len", "act_heads"))


class Output(nn.Module):
  """HF BertSelfOutput / BertOutput: LayerNorm(dropout(dense(x)) + residual)."""
  config: BertConfig
  axes: tuple[str, str]

  @nn.compact
  def __call__(self, x, residual, deterministic: bool = True):
    c = self.config
    x = nn.Dropout(c.hidden_dropout_prob)(_dense(c, c.hidden_size, self.axes, "dense")(x, deterministic),
                                          deterministic)
    return LayerNorm(c.layer_norm_eps, c.compute_dtype, name="LayerNorm")(x + residual)


class Attention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    attended = SelfAttention(self.config, name="self")(x, mask, deterministic)
    return Output(self.config, ("heads", "embed"), name="output")(attended, x, deterministic)


class Intermediate(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.config
    x = ACTIVATIONS[c.hidden_act](_dense(c, c.intermediate_size, ("embed", "mlp"), "dense")(x, deterministic))
    return constrain(x, ("act_batch", "act_len", "act_mlp"))


class Layer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    c = self.config
    x = Attention(c, name="attention")(x, mask, deterministic)
    x = Output(c, ("mlp", "embed"), name="output")(Intermediate(c, name="intermediate")(x, deterministic), x,
                                                   deterministic)
    return constrain(x, _ACT)


class Encoder(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    c = self.config
    layer = nn.remat(Layer, static_argnums=(3,)) if c.remat else Layer
    for i in range(c.num_hidden_layers):
      x = layer(c, name=f"layer_{i}")(x, mask, deterministic)
    return x


class Pooler(nn.Module):
  """HF BertPooler: tanh(dense(state of [CLS]))."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden):
    c = self.config
    dense = Dense(c.hidden_size, ("embed", "embed_out"), use_bias=True, dtype=c.compute_dtype, name="dense")
    return jnp.tanh(dense(hidden[:, 0]))


class BertModel(nn.Module):
  """HF `BertModel`: ids -> (last hidden state (B, L, D), pooler output (B, D) or None)."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None,
               deterministic: bool = True):
    c = self.config
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(c, name="embeddings")(input_ids, token_type_ids, deterministic)
    mask = attention_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, L): keys that are real tokens
    hidden = Encoder(c, name="encoder")(x, mask, deterministic)
    pooled = Pooler(c, name="pooler")(hidden) if c.add_pooling_layer else None
    return hidden, pooled


class BertTextEncoder(nn.Module):
  """A `BertModel` and sentence-transformers pooling: (B, L) ids and masks -> (B, D) float32.

  pooling: "mean" (masked mean over `embed_mask`, [CLS] and [SEP] included, as sentence-transformers'
    mean pooling over the attention mask does) or "cls" (the [CLS] state, before the pooler).
  normalize: L2-normalize the result, as a sentence-transformers `Normalize` module does. Off by
    default, like the LLM `TextEncoder`; loaders turn it on when the model directory's pipeline
    has that module (all-MiniLM-L6-v2 does).
  Params: {"model": <HF BertModel tree>}, the same layout as `TextEncoder`'s.
  """
  config: BertConfig
  pooling: str = "mean"
  normalize: bool = False

  def setup(self):
    if self.pooling not in BERT_POOLING_MODES:
      raise ValueError(f"unknown BERT pooling mode {self.pooling!r}; known: {', '.join(BERT_POOLING_MODES)}")
    self.model = BertModel(self.config)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, embed_mask: jax.Array,
               deterministic: bool = True) -> jax.Array:
    hidden, _ = self.model(input_ids, attention_mask, None, deterministic)
    if self.pooling == "mean":
      pooled = pooling_lib.masked_mean(hidden, embed_mask)
    else:
      first = jnp.argmax(attention_mask.astype(bool), axis=1)  # [CLS]: the first real token, any padding
      pooled = jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    if self.normalize:  # torch F.normalize: x / max(|x|, 1e-12); all-zero (padding) rows stay zero
      pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled
