"""What the CLIP trainer (and `evaluate`) build from a config: data dirs, text side, model, params.

Kept apart from tasks/clip.py so that the stage reads as a short top-to-bottom story and the
evaluate CLI rebuilds exactly the same model.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

from cxrclip_jax import distributed, sharding
from cxrclip_jax.eval import zeroshot
from cxrclip_jax.eval.embedder import TextEmbedder
from cxrclip_jax.export import bert_hf, hf, vision_hf
from cxrclip_jax.models import lora as lora_lib
from cxrclip_jax.models.clip import ClipConfig, DualTower
from cxrclip_jax.models.llm_encoder import LlmConfig, check_token_ids
from cxrclip_jax.models.vision import VitConfig
from cxrclip_jax.tasks import text_cache
from data_pipelines import assets, pipelines, prepare
from data_pipelines.tokenization import Llm2VecTokenizer

# Rows of a batch the devices need (the rest, e.g. report strings, stays on the host).
DEVICE_KEYS = ("image", "input_ids", "attention_mask", "embed_mask", "text_id", "study_id", "labels",
               "record_index", "valid")


# ---------------------------------------------------------------------------------------- data

def data_dirs(config) -> list[str]:
  """The prepared dataset dirs; the embedded demo set is built on first use when none is given."""
  dirs = [d for d in config.data.dirs.split(",") if d]
  if dirs:
    return dirs
  out = pathlib.Path(config.data.build_demo)
  if not out.is_absolute():
    out = assets.cache_dir() / f"{config.data.build_demo}_{config.data.image_size}px"
  with distributed.main_first(f"demo set {out}"):  # built by process 0, then found by the others
    if not (out / "summary.json").is_file() or _status(out) != "ok":
      if not distributed.is_main():
        raise prepare.PrepareError(f"process 0 did not build the demo set in {out}")
      print(f"building the demo set in {out} (once)", flush=True)
      prepare.run(prepare.Options(dataset="demo", output=str(out), image_size=config.data.image_size,
                                  workers=max(1, config.data.workers)))
  return [str(out)]


def _status(out: pathlib.Path) -> str:
  import json
  try:
    return json.loads((out / "summary.json").read_text()).get("status", "")
  except ValueError:
    return ""


def weights(config, dirs):
  w = [float(x) for x in config.data.weights.split(",") if x]
  if w and len(w) != len(dirs):
    raise ValueError(f"data.weights has {len(w)} entries for {len(dirs)} data dirs")
  return w or None


def eval_targets(dirs, splits):
  """(name, dir, split) for each eval split present; names carry the dir when there are several."""
  out = []
  for d in dirs:
    sizes = pipelines.split_sizes(d)
    for s in splits:
      if sizes.get(s):
        out.append((s if len(dirs) == 1 else f"{pathlib.Path(d).name}:{s}", d, s))
  return out


def eval_dataset(config, data_dir: str, split: str, tokenizer):
  """A zero-argument callable giving a fresh single pass over the split (padded batches)."""
  return lambda: iter(pipelines.clip_dataset(
      data_dir, split, batch_size=config.data.eval_batch_size,
      image_size=config.data.image_size, tokenizer=tokenizer, max_length=config.text.max_length,
      seed=config.seed, train=False, process_index=jax.process_index(), process_count=jax.process_count(),
      worker_count=config.data.workers, mean=config.data.mean, std=config.data.std,
      instruction=config.text.instruction))


# ----------------------------------------------------------------------------------- text side

def report_text(row: dict) -> str:
  """The report as the pipeline feeds it to the text tower (tagged when sections are known)."""
  return row.get("report_tagged") or row["report"]


@dataclasses.dataclass
class TrainTable:
  """Cached LLM embeddings of every training record of every dataset, with per-dataset offsets."""
  table: np.ndarray     # (sum of records, D_text)
  offsets: np.ndarray   # (num datasets,)


class TextSide:
  """The text encoder (an LLM, or a BERT sentence encoder with text.family=bert): its directory,
  config, tokenizer, and (cached mode) its embeddings of all reports."""

  def __init__(self, config, mesh, cache_dir: pathlib.Path, write_cache: bool = True):
    self.config, self.mesh, self.cache_dir, self.write_cache = config, mesh, cache_dir, write_cache
    self.mode, self.family = config.text.mode, config.text.get("family", "llm")
    if self.family not in ("llm", "bert"):
      raise ValueError(f"text.family={self.family!r}: llm | bert")
    default = assets.path("minilm" if self.family == "bert" else "smollm2")
    self.model_dir = pathlib.Path(config.text.model_dir or default)
    self.num_layers = config.text.num_layers or None
    if self.family == "bert":
      if self.mode == "lora":
        raise ValueError("text.family=bert: text.mode must be cached or full (BERT has no LoRA branches)")
      if self.num_layers or config.text.pooling != "mean":
        raise ValueError("text.family=bert uses the whole sentence encoder as its pipeline says: "
                         "set text.num_layers=0 and text.pooling=mean")
      # A sentence encoder is used as its sentence-transformers pipeline says (pooling, normalize).
      module, params, _ = bert_hf.load_bert(self.model_dir)
      self._bert = module, params  # its config (pooler or not) and pipeline decide the tree
      self.llm_config = dataclasses.replace(module.config, dtype=config.text.dtype)
      self.tokenizer = bert_hf.BertTokenizer.from_model_dir(self.model_dir, max_length=config.text.max_length)
    else:
      lora = lora_lib.LoraConfig(**config.text.lora.to_dict()) if self.mode == "lora" else None
      overrides = {"num_hidden_layers": self.num_layers} if self.num_layers else {}
      self.llm_config = LlmConfig.from_hf(hf.read_config(self.model_dir), is_causal=not config.text.bidirectional,
                                          dtype=config.text.dtype, remat=config.text.remat, lora=lora, **overrides)
      self.tokenizer = Llm2VecTokenizer.from_model_dir(self.model_dir, max_length=config.text.max_length,
                                                       pooling=config.text.pooling, wrapper=config.text.wrapper)
    self.pipeline_tokenizer = None if self.mode == "cached" else self.tokenizer
    # Latent-attention sizes: the config's, checked against the checkpoint's (0 = take those).
    self.num_latents, self.latent_heads = hf.latent_attention_sizes(
        self.model_dir, config.text.num_latents, config.text.latent_heads) \
        if config.text.pooling == "latent_attention" else (config.text.num_latents, config.text.latent_heads)
    self.standardize = self.mode == "cached" and config.text.standardize
    self.stats = None  # (mean, 1/std) of the training reports' embeddings, set by `tables`
    self._embedder = None
    self._prompt_emb = None

  def load(self, dtype: str = "float32"):
    """(module, numpy params) of the pretrained text encoder."""
    t = self.config.text
    if self.family == "bert":
      module, params = self._bert
      return module.clone(config=dataclasses.replace(module.config, dtype=dtype)), params
    module, params, _ = hf.load_text_encoder(self.model_dir, pooling=t.pooling, is_causal=not t.bidirectional,
                                             dtype=dtype, num_layers=self.num_layers, num_latents=self.num_latents,
                                             latent_heads=self.latent_heads)
    return module, params

  def _embed(self, texts, what: str):
    if self._embedder is None:
      module, params = self.load(self.config.text.dtype)
      self._embedder = TextEmbedder(module, params, self.tokenizer, self.mesh,
                                    batch_size=self.config.text.embed_batch_size, rules=sharding.rules(self.config))
    return self._embedder.embed(texts, self.config.text.instruction, progress=self.write_cache,
                                desc=f"caching {len(texts)} {what} embeddings")

  def _cached(self, texts, what: str):
    t = self.config.text
    return text_cache.cached_embeddings(self.cache_dir, texts, lambda u: self._embed(u, what), write=self.write_cache,
                                        model_dir=self.model_dir, pooling=t.pooling, bidirectional=t.bidirectional,
                                        instruction=t.instruction, max_length=t.max_length, dtype=t.dtype,
                                        num_layers=self.num_layers, wrapper=t.wrapper)

  def tables(self, dirs, splits) -> tuple[TrainTable | None, dict[str, np.ndarray] | None]:
    """(training table, {eval name: table}) in cached mode; (None, None) otherwise."""
    if self.mode != "cached":
      return None, None
    rows = {(d, s): pipelines.read_split(d, s) for d in dirs for s in dict.fromkeys(splits)
            if pipelines.split_sizes(d).get(s)}
    texts = [report_text(r) for key in rows for r in rows[key]]
    emb = self._cached(texts, "report")
    out, start = {}, 0
    for key, rs in rows.items():
      out[key] = emb[start:start + len(rs)]
      start += len(rs)
    self._prompt_emb = self._cached(zeroshot.prompt_texts()[0], "prompt")  # apart: prompts change more often
    train_split = splits[0]
    parts = [out.get((d, train_split), np.zeros((0, emb.shape[1]), np.float32)) for d in dirs]
    train = TrainTable(np.concatenate(parts), np.cumsum([0] + [len(p) for p in parts[:-1]]))
    self.stats = (train.table.mean(0), 1.0 / np.maximum(train.table.std(0), 1e-6))
    evals = {name: out[(d, s)] for name, d, s in eval_targets(dirs, splits[1:])}
    return train, evals

  def prompt_inputs(self) -> dict[str, np.ndarray]:
    """The zero-shot prompts (`zeroshot.prompt_texts()`) as model text input."""
    if self.mode == "cached":
      return {"text_emb": self._prompt_emb}  # set by `tables`
    return self.tokenizer(zeroshot.prompt_texts()[0], self.config.text.instruction,
                          pad_to=self.config.text.max_length)


def device_batch(batch: dict, train_table: TrainTable | None, mesh, vocab_size: int | None = None) -> dict:
  """Host batch -> global device arrays, with cached text embeddings gathered on the host."""
  arrays = {k: v for k, v in batch.items() if k in DEVICE_KEYS}
  if vocab_size is not None and "input_ids" in arrays:
    check_token_ids(arrays["input_ids"], vocab_size)
  if train_table is not None:
    rows = train_table.offsets[batch["dataset_index"]] + batch["record_index"]
    arrays["text_emb"] = train_table.table[rows]
  return sharding.global_batch(arrays, mesh)


# ------------------------------------------------------------------------------- model, params

def vision_config(config) -> VitConfig:
  v = config.vision
  if v.model_dir:  # the checkpoint's architecture, run at the configured resolution
    hf_config = VitConfig.from_hf(hf.read_config(v.model_dir), dtype=config.train.dtype, remat=v.remat)
    return dataclasses.replace(hf_config, image_size=config.data.image_size)
  return VitConfig(family=v.family, image_size=config.data.image_size, patch_size=v.patch_size,
                   hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                   num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                   pooling=v.pooling, dtype=config.train.dtype, remat=v.remat, drop_path_rate=v.drop_path_rate)


def build_model(config, text: TextSide):
  """(DualTower, example inputs for init)."""
  c = config.clip
  clip_config = ClipConfig(embed_dim=c.embed_dim, text_mode=text.mode, adapter=c.adapter, similarity=c.similarity,
                           loss=c.loss, init_log_scale=c.init_log_scale, text_pooling=config.text.pooling,
                           standardize_text=text.standardize, num_latents=text.num_latents or hf.DEFAULT_NUM_LATENTS,
                           latent_heads=text.latent_heads or hf.DEFAULT_LATENT_HEADS,
                           text_normalize=text.family == "bert" and text.load()[0].normalize)
  model = DualTower(vision_config(config), clip_config, None if text.mode == "cached" else text.llm_config,
                    dtype=np.dtype(config.train.dtype))
  s = config.data.image_size
  images = np.zeros((2, s, s, 3), np.float32)
  if text.mode == "cached":
    text_in = {"text_emb": np.zeros((2, text.llm_config.hidden_size), np.float32)}
  else:
    ids = np.zeros((2, 8), np.int32)
    text_in = {"input_ids": ids, "attention_mask": np.ones_like(ids), "embed_mask": np.ones_like(ids)}
  return model, (images, text_in)


def load_pretrained(config, params, shardings, text: TextSide):
  """Overwrites freshly initialized parts with pretrained weights (and the text statistics),
  placed with their shardings. LoRA branches (never in a checkpoint) keep their fresh init."""
  loaded = {}
  if text.mode in ("lora", "full"):
    loaded["text_encoder"] = text.load()[1]
  if config.vision.model_dir:
    loaded["vision_model"] = vision_hf.load_vision_tower(config.vision.model_dir, image_size=config.data.image_size,
                                                         dtype=config.train.dtype, remat=config.vision.remat)[1]
  if text.standardize:
    loaded["text_adapter"] = {"input_mean": text.stats[0], "input_scale": text.stats[1]}
  return sharding.place_loaded(params, shardings, loaded)


def param_groups(config):
  """The config's groups, after the fixed ones: text statistics and DINOv2's (unused) mask token
  never train."""
  fixed = ((r"^text_adapter/input_(mean|scale)$", {"frozen": True}),
           (r"^vision_model/embeddings/mask_token$", {"frozen": True}))
  groups = tuple(tuple(g) for g in config.optim.groups)
  if not groups and config.text.mode == "lora":  # LoRA branches (and a pooling head) train; the LLM is frozen
    groups = ((r"^text_encoder/.*/lora/", {}), (r"^text_encoder/latent_attn/", {}),
              (r"^text_encoder/", {"frozen": True}))
  return fixed + groups


def layer_decay(config):
  if config.optim.layer_decay == 1.0:
    return None
  return {"rate": config.optim.layer_decay, "tower": "vision_model", "num_layers": config.vision.num_hidden_layers
          if not config.vision.model_dir else vision_config(config).num_hidden_layers,
          "embed_regex": r"^vision_model/(embeddings|pre_layrnorm)/"}
