"""Runs llm2vec 0.2.3 (in its own venv, transformers 4.44) on a list of jobs; the parity reference.

usage: python llm2vec_ref.py jobs.json   where jobs.json is a list of
  {"model_dir", "pooling", "bidirectional", "instruction", "texts", "batch_size", "max_length", "out"}
Each job's embeddings are saved as float32 .npy at "out".
"""
import json
import sys

import numpy as np
import torch
from llm2vec import LLM2Vec


def main(path):
  for job in json.load(open(path)):
    model = LLM2Vec.from_pretrained(job["model_dir"], enable_bidirectional=job["bidirectional"],
                                    pooling_mode=job["pooling"], max_length=job.get("max_length", 512),
                                    torch_dtype=torch.float32)
    pairs = [[job.get("instruction", ""), t] for t in job["texts"]]
    with torch.no_grad():
      emb = model.encode(pairs, batch_size=job.get("batch_size", 8), show_progress_bar=False)
    np.save(job["out"], np.asarray(emb, np.float32))


if __name__ == "__main__":
  main(sys.argv[1])
