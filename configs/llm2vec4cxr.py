r"""LLM2VEC4CXR: a decoder LLM adapted into a chest X-ray report encoder, in stages.

  MNTP (masked next-token prediction, bidirectional) -> SimCSE (unsupervised) -> supervised
  contrastive with hard negatives; each stage starts from the previous one's merged weights, in
  its own W/<stage>/ (resumable), and the chain's result is exported to W/export/ (a plain HF
  directory with llm2vec_config.json that transformers and llm2vec load).

Demo (the default; a 2-core CPU): SmolLM2-135M's first layers on the IU demo set's training reports.

  python -m cxrclip_jax.main --config=configs/llm2vec4cxr.py --workdir=runs/llm2vec4cxr_demo

The longest CPU recipe (`cpu`, <= 90 min on 2 cores) and the paper's (`mimic`, a GPU/TPU host,
Llama-3.2-1B-Instruct class, Llama-3 chat wrapper, 512 tokens, bf16 with remat):

  python -m cxrclip_jax.main --config=configs/llm2vec4cxr.py:mimic --workdir=/ckpt/llm2vec4cxr \
      --config.model_dir=/models/Llama-3.2-1B-Instruct --config.data.dirs=/data/prepared/mimic_cxr

Tests: `get_config("tiny")`. Any field can be overridden with --config.a.b=value.
"""
import ml_collections

from cxrclip_jax import sharding

_LORA_ALL = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
VARIANTS = ("demo", "cpu", "mimic", "tiny")


def _stage(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(finetune="", **kw))  # finetune "": the chain's


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
  arg = arg or "demo"
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}: {' | '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.task = "llm2vec4cxr"
  c.variant = arg
  c.seed = 0
  # Keep freed host memory in the process (cxrclip_jax/host_memory.py)? Not here: XLA:CPU's
  # multi-GB temporary buffer of a supervised step is not reused from the kept heap and the process
  # grew past 24 GB in a few steps; released, it stays at ~9-13 GB (at the cost of page faults).
  c.keep_host_memory = False
  c.stages = "mntp,supervised"      # comma-separated, run in order; the paper: mntp,simcse,supervised

  # --- the LLM: an HF Llama / Qwen2 / Mistral directory ("" = SmolLM2-135M-Instruct from the cache).
  c.model_dir = ""
  c.num_layers = 0                  # > 0: keep only the first N decoder layers (the export has N)
  c.finetune = "lora"               # lora (merged after each stage) | full; a stage's own `finetune` wins
  c.lora = ml_collections.ConfigDict(dict(rank=16, alpha=32.0, dropout=0.05, target=_LORA_ALL))

  # --- text encoding, as llm2vec: bidirectional attention, pooling, tokenization.
  c.text = ml_collections.ConfigDict()
  c.text.pooling = "mean"           # mean | weighted_mean | latent_attention (trained in `supervised`)
  c.text.max_length = 512           # of evaluation and the export (llm2vec's default); each stage has its own
  c.text.wrapper = "auto"           # chat template: auto | none | llama3 | mistral | qwen2 | gemma
  c.text.dtype = "float32"
  c.text.remat = False
  c.text.num_latents = 0            # latent attention: 0 = the checkpoint's, else 512
  c.text.latent_heads = 0           # latent attention: 0 = the checkpoint's, else 8

  # --- data: prepared datasets (data_pipelines.prepare); the demo set is built on first use.
  c.data = ml_collections.ConfigDict()
  c.data.dirs = ""
  c.data.build_demo = "demo_data"
  c.data.image_size = 128           # of the demo set built on first use (shared with llm2clip's)
  c.data.workers = 2
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.eval_max_queries = 0       # > 0: cap each text-task eval set (faster intermediate evals)

  # --- the stages (llm2vec's recipe values where they apply; sizes shrink for a CPU).
  c.mntp = _stage(steps=1000, batch_size=32, lr=5e-5, warmup_steps=0, max_length=512, mlm_probability=0.2,
                  mask_token_type="blank", all_mask=False, weight_decay=0.0)
  c.simcse = _stage(steps=1000, batch_size=128, lr=3e-5, warmup_steps=0, max_length=128, attention_dropout=0.3,
                    scale=20.0, unit="report", weight_decay=0.0, length_multiple=32)
  # length_multiple: each batch is padded to its longest text rounded up to this (0: max_length).
  # task_mixture: proportional (llm2vec: tasks drawn by size) | balanced (round-robin over tasks).
  # run_supervised.py passes scale 50 (HardNegativeNLLLoss's class default is 20).
  c.supervised = _stage(steps=1000, batch_size=512, lr=2e-4, warmup_steps=300, max_length=128, scale=50.0,
                        n_negatives=1, weight_decay=0.0, length_multiple=32, task_mixture="proportional")

  # --- optimizer (HF Trainer's AdamW defaults; lr / warmup / weight decay come from each stage).
  c.optim = ml_collections.ConfigDict(dict(lr=0.0, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                                           grad_clip=1.0, accum_steps=1, groups=()))
  # > 1: GradCache (cxrclip_jax/train/gradcache.py) in the contrastive stages' loss (supervised):
  # queries with their positives and negatives are embedded in this many chunks keeping only the
  # embeddings, the loss scores the whole global batch, the backward re-runs one chunk at a time.
  # Same gradients as 1 (exact for a dropout-free forward), activations of batch/c queries'
  # texts, ~1 extra forward of compute. Must divide the supervised batch (per accum micro-batch).
  c.optim.contrastive_chunks = 1

  # --- logging, checkpoints, evaluation (per stage).
  # max_in_flight: steps dispatched ahead of the device; on XLA:CPU each holds its whole
  # temporary buffer (~6 GB for the demo's supervised step), so keep it small.
  # nonfinite: "stop" ends the run at a non-finite loss or gradient norm (the last checkpoint stays
  # intact); "skip" drops that update and ends after max_skips such steps in a row.
  c.train = ml_collections.ConfigDict(dict(steps=0, log_every=10, eval_every=0, checkpoint_every=100,
                                           keep_checkpoints=2, max_in_flight=2, nonfinite="stop", max_skips=5))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis (models/) -> mesh axes; e.g. ("embed", None) keeps embeddings replicated under fsdp.
  c.sharding_rules = sharding.DEFAULT_RULES

  if arg == "demo":
    # SmolLM2-135M's first 10 of 30 layers: an unadapted decoder embeds as well from mid depth, and
    # a 2-core CPU trains ~3x more steps of 10 layers than of 30 in the same time.
    c.num_layers = 10
    c.finetune = "full"
    # Fully fine-tuned MNTP. In LoRA (mntp.finetune=lora) it kept more of the raw model
    # (impression -> report R@1 58.2 vs 43.0 after MNTP), but the supervised stage after it ended
    # lower on 5 of 7 text tasks (impression -> report 32.7 vs 41.8, MC4 64.5 vs 69.0).
    c.mntp.update(steps=60, batch_size=8, lr=1e-4, max_length=128)
    # A step costs ~1.7 ms per padded token (fwd + bwd of 10 layers on 2 cores): 16 queries x
    # (positive + 2 one-error negatives) x 64 tokens take ~7 s, 100 steps ~12 min in ~5.5 GB.
    # 32 queries took twice as long and scored no better (R@1 / MC4 within 3 points).
    # Fixed shapes (length_multiple 0): with host_memory's kept heap, XLA:CPU's per-step temporary
    # buffer of a new size cannot reuse the last one's, and varying L grew the process past 24 GB.
    c.supervised.update(steps=100, batch_size=16, lr=5e-5, warmup_steps=10, max_length=64, n_negatives=2,
                        length_multiple=0, task_mixture="balanced")
    c.train.update(log_every=10, checkpoint_every=50)
    c.data.eval_max_queries = 200
  if arg == "cpu":
    c.num_layers = 15
    c.finetune = "full"
    c.stages = "mntp,supervised"
    c.mntp.update(steps=200, batch_size=8, lr=1e-4, max_length=128)
    # 15 layers cost ~1.5x the demo's 10 per step: ~15 min of MNTP, ~60 min of supervised steps.
    c.supervised.update(steps=300, batch_size=32, lr=5e-5, warmup_steps=30, max_length=64, n_negatives=2,
                        length_multiple=0, task_mixture="balanced")
    c.train.update(log_every=10, checkpoint_every=50)
  if arg == "mimic":
    # The released LLM2VEC4CXR: Llama-3.2-1B-Instruct, bidirectional, Llama-3 chat wrapper, 512
    # tokens, latent-attention pooling; llm2vec's stage settings and global batches (supervised:
    # 64 per device x 8). GradCache in 8 chunks: the 1B LLM holds activations of 64 queries'
    # 3 x 512-token texts at a time (8 queries per device on 8 devices) while every query still
    # scores all 512 positives and 512 hard negatives: this is what makes the paper's global batch
    # 512 fit (optim.accum_steps instead would shrink the negatives to a micro-batch's).
    # benchmarks/gradcache_memory.py --mimic, one of 8 devices, XLA:CPU's buffer assignment:
    # 476 GiB of temporaries at 1 chunk, 61 GiB at 8 (not yet measured on an accelerator).
    c.stages = "mntp,simcse,supervised"
    c.optim.contrastive_chunks = 8
    c.text.wrapper = "llama3"
    c.text.pooling = "latent_attention"
    c.text.dtype = "bfloat16"
    c.text.remat = True
    c.data.workers = 16
    c.simcse.update(length_multiple=128)  # fewer distinct shapes: fewer recompiles on an accelerator
    c.supervised.update(max_length=512, length_multiple=128)
    c.train.update(log_every=50, eval_every=500, checkpoint_every=250, keep_checkpoints=3)
  if arg == "tiny":
    c.stages = "mntp,simcse,supervised"
    c.finetune = "lora"
    c.text.max_length = 32
    c.mntp.update(steps=3, batch_size=8, lr=1e-3, max_length=32)
    c.simcse.update(steps=3, batch_size=8, lr=1e-3, max_length=32)
    c.supervised.update(steps=3, batch_size=8, lr=1e-3, max_length=32, n_negatives=2)
    c.train.update(log_every=1, checkpoint_every=2)
    c.data.workers = 0
    c.data.eval_max_queries = 8

  c.lock()
  return c
