r"""LLM2CLIP4CXR: an LLM text side + a ViT trained with a contrastive loss on image-report pairs.

Demo (the default; a 2-core CPU, ~15 min from scratch): builds the embedded IU demo set, caches
SmolLM2-135M report embeddings, trains a small ViT from scratch, evaluates on the test split.

  python -m cxrclip_jax.main --config=configs/llm2clip.py --workdir=runs/demo

MIMIC-CXR-JPG, the released recipe (a GPU/TPU host; see README "Training on MIMIC-CXR"):

  python -m data_pipelines.prepare --dataset=mimic_cxr --root=/data/mimic-cxr-jpg \
      --output=/data/prepared/mimic_cxr --image_size=512
  python -m cxrclip_jax.main --config=configs/llm2clip.py:mimic --workdir=/ckpt/llm2clip_mimic \
      --config.data.dirs=/data/prepared/mimic_cxr --config.text.model_dir=/models/LLM2VEC4CXR \
      --config.vision.model_dir=/models/clip-vit-large-patch14

Tests: `get_config("tiny")`. Any field can be overridden with --config.a.b=value.
"""
import math

import ml_collections

from cxrclip_jax import sharding

_LORA_QKVO = r"(q_proj|k_proj|v_proj|o_proj)$"


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
  arg = arg or "demo"
  if arg not in ("demo", "mimic", "tiny"):
    raise ValueError(f"unknown config variant {arg!r}: demo | mimic | tiny")
  c = ml_collections.ConfigDict()
  c.task = "clip"
  c.variant = arg
  c.seed = 0

  # --- data: prepared datasets (data_pipelines.prepare); the demo set is built on first use.
  c.data = ml_collections.ConfigDict()
  c.data.dirs = ""                  # comma-separated prepared dataset dirs ("" = the demo set)
  c.data.weights = ""               # comma-separated mixing weights, one per dir
  c.data.build_demo = "demo_data"   # where to build the demo set (relative: under the cache dir)
  c.data.image_size = 128
  c.data.batch_size = 64            # global
  c.data.eval_batch_size = 128
  c.data.workers = 2                # Grain worker processes per host
  c.data.shuffle_p = 0.3            # section-aware sentence shuffle (lora/full text modes)
  # Small affine + intensity jitter of training images (no flips). Off for the demo: its renders
  # already vary per study, and on a 2-core CPU's ~15 epochs a from-scratch ViT learns far slower
  # with it (InfoNCE 4.16 vs 3.90 after 300 steps).
  c.data.augment = False
  c.data.mean = 0.5
  c.data.std = 0.5
  c.data.train_split = "train"
  c.data.eval_splits = "test"       # the demo evaluates on test only (validation: set it here)

  # --- text side: the LLM (an HF directory), how it is used, how reports are embedded.
  c.text = ml_collections.ConfigDict()
  c.text.family = "llm"             # llm (Llama/Qwen2/Mistral) | bert (a sentence-transformers BERT dir)
  c.text.model_dir = ""             # "" = SmolLM2-135M-Instruct (family bert: all-MiniLM-L6-v2) from the cache
  c.text.mode = "cached"            # cached | lora | full
  c.text.pooling = "mean"
  # SmolLM2 has had no LLM2Vec (MNTP) adaptation, and unadapted decoders embed better causally:
  # a ridge probe on its mean-pooled report embeddings gives finding AUROC 0.95 causal vs 0.89
  # bidirectional. An LLM2VEC4CXR model (the mimic variant) is used bidirectionally.
  c.text.bidirectional = False
  c.text.instruction = ""
  # Chat template around each text: auto (llm2vec's rule, keyed on config.json's _name_or_path) |
  # none | llama3 (what the released LLM2VEC4CXR always applies) | mistral | qwen2 | gemma.
  c.text.wrapper = "auto"
  c.text.max_length = 128
  c.text.dtype = "float32"
  # > 0: use only the LLM's first N layers (then its final norm). An unadapted LLM embeds better
  # from mid depth: a ridge probe on SmolLM2's causal mean-pooled report embeddings gives finding
  # AUROC 0.966 from 10 of its 30 layers, 0.958 from 15, 0.948 from all 30 — and 10 layers embed
  # the demo's reports 3x faster. 0 (all layers) elsewhere.
  c.text.num_layers = 10
  c.text.embed_batch_size = 32
  # Latent-attention pooling sizes; 0 takes them from the checkpoint (the latents' rows and
  # llm2vec_config.json's latent_heads), else the released 512 latents x 8 heads. A nonzero value
  # that disagrees with the checkpoint is an error naming both numbers.
  c.text.num_latents = 0
  c.text.latent_heads = 0
  c.text.standardize = True         # cached mode: standardize LLM embeddings with training-set stats
  c.text.remat = False
  c.text.lora = ml_collections.ConfigDict(dict(rank=16, alpha=32.0, dropout=0.05, target=_LORA_QKVO))

  # --- vision tower: from scratch (model_dir "") or an HF CLIP/SigLIP/DINOv2 directory.
  c.vision = ml_collections.ConfigDict()
  c.vision.model_dir = ""
  c.vision.family = "siglip"
  c.vision.patch_size = 16
  c.vision.hidden_size = 128
  c.vision.intermediate_size = 512
  c.vision.num_hidden_layers = 4
  c.vision.num_attention_heads = 4
  c.vision.pooling = "mean"
  c.vision.remat = False
  c.vision.drop_path_rate = 0.0

  # --- dual tower and loss.
  c.clip = ml_collections.ConfigDict()
  c.clip.embed_dim = 256
  c.clip.adapter = "linear"         # linear (LayerNorm + Linear, as released) | mlp (LLM2CLIP residual MLP)
  c.clip.similarity = "standard"    # standard | paper (unnormalized x raw log-scale, as released)
  c.clip.loss = "infonce"           # infonce | siglip
  c.clip.multi_positive = True      # identical reports / same study count as positives
  c.clip.label_smoothing = 0.0
  c.clip.init_log_scale = math.log(1 / 0.07)

  # --- optimizer.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 50
  c.optim.b2 = 0.98
  c.optim.grad_clip = 1.0
  # > 1: split each global batch into this many micro-batches inside the step (less activation
  # memory, same update). Steps, warmup and the schedule count optimizer updates. A contrastive
  # loss then sees only its micro-batch's negatives: InfoNCE over k micro-batches of b is not
  # InfoNCE over k*b (exact large-batch contrastive gradients: contrastive_chunks below).
  c.optim.accum_steps = 1
  # > 1: GradCache (cxrclip_jax/train/gradcache.py). Both towers embed the batch in this many
  # chunks (rows j, j+c, ...), keeping only the embeddings; the loss is over the whole batch; the
  # backward re-runs one chunk at a time. Same gradients as 1 (exact for a dropout-free forward),
  # activation memory of batch/c rows, ~1 extra forward pass of compute. Must divide the batch.
  c.optim.contrastive_chunks = 1
  c.optim.layer_decay = 1.0         # < 1: layer-wise lr decay over the vision tower's blocks
  # (regex over param paths, options) pairs, first match wins; see cxrclip_jax/optim.py.
  c.optim.groups = ()

  # --- schedule, logging, checkpoints.
  c.train = ml_collections.ConfigDict()
  c.train.epochs = 16
  c.train.steps = 0                 # > 0 overrides epochs
  c.train.dtype = "float32"         # compute dtype of the towers (bfloat16 on accelerators)
  c.train.log_every = 20
  c.train.eval_every = 0            # 0: only at the end
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.max_in_flight = 2         # steps dispatched ahead of the device (each holds its memory)
  # A non-finite loss or gradient norm: "stop" ends the run (the last checkpoint stays intact);
  # "skip" drops that update and goes on, ending after max_skips such steps in a row.
  c.train.nonfinite = "stop"
  c.train.max_skips = 5

  # --- mesh: sizes of (data, fsdp, tensor); -1 fills the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis (models/) -> mesh axes; e.g. ("embed", None) keeps embeddings replicated under fsdp.
  c.sharding_rules = sharding.DEFAULT_RULES

  if arg == "mimic":
    # The released LLM2CLIP4CXR recipe: LLM2VEC4CXR text side, frozen LLM with LoRA r16/a32 on
    # q/k/v/o, LayerNorm+Linear adapter, ViT-L/14-class tower at 448 px, global batch 512,
    # 20 epochs, lr 1e-5, wd 0.05, layer decay 0.85, bf16.
    c.data.image_size = 448
    c.data.batch_size = 512
    c.data.eval_batch_size = 256
    c.data.workers = 16
    c.text.mode = "lora"
    c.text.bidirectional = True
    c.text.num_layers = 0
    c.data.augment = True
    c.text.pooling = "latent_attention"
    c.text.max_length = 512
    c.text.wrapper = "llama3"
    c.text.dtype = "bfloat16"
    c.text.remat = True
    c.vision.family = "clip"
    c.vision.pooling = "cls"
    c.vision.remat = True
    c.clip.embed_dim = 1280
    c.clip.similarity = "paper"
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 500
    c.optim.layer_decay = 0.85
    # GradCache over the global batch of 512: the towers (ViT-L/14 at 448 px, 1025 tokens x 24
    # layers, and the 1B LLM at 512 tokens) hold activations of 512/8 = 64 rows at a time (8 per
    # device on 8 devices) while InfoNCE still scores all 512 x 512 pairs. This is what makes the
    # paper's global batch 512 of ViT-L/14@448 + 1B LLM fit (accum_steps would instead shrink the
    # negatives to a micro-batch's). benchmarks/gradcache_memory.py --mimic, one of 8 devices,
    # XLA:CPU's buffer assignment: 611 GiB of temporaries at 1 chunk, 79 GiB at 8 (not yet
    # measured on an accelerator; raise to 16 if a device still runs out).
    c.optim.contrastive_chunks = 8
    c.optim.groups = (
        (r"^text_encoder/.*/lora/", {}),            # LoRA branches train
        (r"^text_encoder/latent_attn/", {}),        # so does the pooling head
        (r"^text_encoder/", {"frozen": True}),      # the LLM itself stays frozen
    )
    c.train.epochs = 20
    c.train.dtype = "bfloat16"
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  if arg == "tiny":
    c.data.image_size = 32
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.data.workers = 0
    c.text.max_length = 32
    c.text.num_layers = 0
    c.vision.patch_size = 8
    c.vision.hidden_size = 32
    c.vision.intermediate_size = 64
    c.vision.num_hidden_layers = 2
    c.vision.num_attention_heads = 2
    c.clip.embed_dim = 16
    c.optim.warmup_steps = 2
    c.train.steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 2

  c.lock()
  return c
