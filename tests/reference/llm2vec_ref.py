"""Runs llm2vec 0.2.3 (in its own venv, transformers 4.44) on a list of jobs; the parity reference.

usage: python llm2vec_ref.py jobs.json   where jobs.json is a list of
  {"model_dir", "pooling", "bidirectional", "instruction", "texts", "batch_size", "max_length", "out"}
    -> that job's embeddings, float32 .npy at "out"; or
  {"prepare": true, "config_class", "name_or_path", "pooling", "texts", "out"}
    -> llm2vec's `prepare_for_tokenization` of each text (chat wrapper, eos suffix), JSON at "out",
       for families our encoder does not run (its rules are keyed on the config class and name).
"""
import json
import sys
import types

import numpy as np
import torch
import transformers
from llm2vec import LLM2Vec


def prepare(job):
  config = getattr(transformers, job["config_class"])()
  config._name_or_path = job["name_or_path"]
  fake = types.SimpleNamespace(model=types.SimpleNamespace(config=config), pooling_mode=job["pooling"])
  out = [LLM2Vec.prepare_for_tokenization(fake, t) for t in job["texts"]]
  with open(job["out"], "w") as f:
    json.dump(out, f)


def main(path):
  for job in json.load(open(path)):
    if job.get("prepare"):
      prepare(job)
      continue
    model = LLM2Vec.from_pretrained(job["model_dir"], enable_bidirectional=job["bidirectional"],
                                    pooling_mode=job["pooling"], max_length=job.get("max_length", 512),
                                    torch_dtype=torch.float32)
    pairs = [[job.get("instruction", ""), t] for t in job["texts"]]
    with torch.no_grad():
      emb = model.encode(pairs, batch_size=job.get("batch_size", 8), show_progress_bar=False)
    np.save(job["out"], np.asarray(emb, np.float32))


if __name__ == "__main__":
  main(sys.argv[1])
