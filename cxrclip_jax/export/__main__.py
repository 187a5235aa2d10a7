"""Export a trained dual tower as Hugging Face directories:

  python -m cxrclip_jax.export --workdir=DIR --output=OUT [--step=N]

OUT/vision/   the vision tower (HF CLIP/SigLIP/DINOv2 layout; transformers loads it)
OUT/text/     the text encoder with LoRA merged (HF Llama/Qwen2/Mistral or BertModel layout) — lora/full modes;
              in cached mode the LLM was frozen, so its source directory is the text encoder
OUT/clip_head.safetensors + clip_head.json   projection, adapter (incl. text statistics) and scale
"""
import json
import pathlib
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (has config.json and checkpoints/).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def export(run, output: pathlib.Path) -> None:
  import jax
  import numpy as np
  from cxrclip_jax import sharding
  from cxrclip_jax.export import hf, keymap, safetensors_io, vision_hf
  params = jax.tree.map(sharding.to_host, run.params())  # gathers params sharded over hosts
  config, model = run.config, run.task.model
  vision_hf.save_vision_tower(output / "vision", model.vision, params["vision_model"])
  bert = config.text.get("family", "llm") == "bert"
  from data_pipelines import assets
  if "text_encoder" in params and bert:
    from cxrclip_jax.export import bert_hf
    text_dir = pathlib.Path(config.text.model_dir or assets.path("minilm"))
    bert_hf.save_bert(output / "text", model.text, params["text_encoder"], pipeline=bert_hf.read_pipeline(text_dir),
                      tokenizer_dir=text_dir)
    source = str(output / "text")
  elif "text_encoder" in params:
    text_dir = pathlib.Path(config.text.model_dir or assets.path("smollm2"))
    hf.save_text_encoder(output / "text", model.text, params["text_encoder"], tokenizer_dir=text_dir,
                         pooling=config.text.pooling, lora=model.text.lora, max_length=config.text.max_length,
                         latent_heads=model.clip.latent_heads)
    source = str(output / "text")
  else:
    source = config.text.model_dir or ("(all-MiniLM-L6-v2" if bert else "(SmolLM2-135M-Instruct") + " from the asset cache)"
  head = {k: params[k] for k in ("visual_projection", "text_adapter", "logit_scale", "logit_bias") if k in params}
  safetensors_io.write(output / "clip_head.safetensors",
                       {k: np.asarray(v) for k, v in keymap.flatten(head).items()})
  (output / "clip_head.json").write_text(json.dumps({
      "text_encoder": source, "text_mode": config.text.mode, "text_pooling": config.text.pooling,
      "text_bidirectional": config.text.bidirectional, "text_num_layers": config.text.num_layers,
      "instruction": config.text.instruction, "max_length": config.text.max_length,
      "clip": model.clip.__dict__, "image_size": config.data.image_size,
      "image_mean": config.data.mean, "image_std": config.data.std}, indent=2, default=str) + "\n")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value or not _OUTPUT.value:
    raise app.UsageError("--workdir and --output are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from cxrclip_jax.checkpoint import CheckpointError
  from cxrclip_jax import tasks
  try:
    run, _ = tasks.load(_WORKDIR.value, _STEP.value)
    export(run, pathlib.Path(_OUTPUT.value))
  except (tasks.TrainingError, CheckpointError, FileNotFoundError, ValueError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 1
  print(f"exported to {_OUTPUT.value}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
