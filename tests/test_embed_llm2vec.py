"""`python -m cxrclip_jax.embed` against llm2vec 0.2.3 itself (run in its own venv, transformers 4.44).

The directories are built by transformers' own `save_pretrained` (tiny random models with each
family's real tokenizer, and the real SmolLM2-135M), never by our exporter.
"""
import json
import pathlib
import subprocess

import numpy as np
import pytest

import hf_tiny
from cxrclip_jax import embed

REF_PYTHON = pathlib.Path(__file__).resolve().parents[1] / ".venv-llm2vec" / "bin" / "python"
REF_SCRIPT = pathlib.Path(__file__).resolve().parent / "reference" / "llm2vec_ref.py"
INSTRUCTION = "Retrieve the impression that summarizes these chest X-ray findings:"
TEXTS = [
    "The heart is normal in size. The lungs are clear. No pneumothorax or pleural effusion.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Cardiomegaly. Mild pulmonary vascular congestion, no focal consolidation. Degenerative changes of the spine.",
    "No acute cardiopulmonary abnormality.",
    "Right PICC tip in the SVC. ETT 4 cm above the carina.",
]
# (family, pooling, bidirectional, instruction)
JOBS = [(k, p, b, i) for k in ("llama", "qwen2", "mistral") for p in ("mean", "weighted_mean")
        for b in (True, False) for i in ("", INSTRUCTION)]
JOBS += [("llama", p, True, INSTRUCTION) for p in ("eos_token", "last_token", "bos_token")]
JOBS += [("smollm2", "mean", True, ""), ("smollm2", "weighted_mean", True, INSTRUCTION)]
# llm2vec's "bidirectional" Qwen2 is causal (a peer bug), so it is no reference for ours; those jobs
# only feed test_qwen2_is_truly_bidirectional.
COMPARED = [j for j in JOBS if not (j[0] == "qwen2" and j[2])]


def _job_name(job):
  kind, pooling, bidir, instr = job
  return f"{kind}-{pooling}-{'bi' if bidir else 'causal'}-{'instr' if instr else 'plain'}"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, asset):
  root = tmp_path_factory.mktemp("hfdirs")
  dirs = {k: hf_tiny.model_dir_with_tokenizer(k, root / k, asset) for k in ("llama", "qwen2", "mistral")}
  dirs["smollm2"] = asset("smollm2")
  return dirs


@pytest.fixture(scope="module")
def reference(model_dirs, tmp_path_factory):
  """All llm2vec embeddings, computed in one subprocess of the reference venv."""
  if not REF_PYTHON.exists():
    pytest.fail(f"{REF_PYTHON} missing: run `make ref-venv` (make test does)")
  out = tmp_path_factory.mktemp("ref")
  jobs = [dict(model_dir=str(model_dirs[k]), pooling=p, bidirectional=b, instruction=i, texts=TEXTS,
               batch_size=2, out=str(out / f"{_job_name((k, p, b, i))}.npy")) for k, p, b, i in JOBS]
  (out / "jobs.json").write_text(json.dumps(jobs))
  proc = subprocess.run([str(REF_PYTHON), str(REF_SCRIPT), str(out / "jobs.json")], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {_job_name(j): np.load(out / f"{_job_name(j)}.npy") for j in JOBS}


def _ours(tmp_path, model_dir, pooling, bidir, instr, batch_size=3):
  path = tmp_path / "texts.jsonl"
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
  return embed.embed_file(str(model_dir), str(path), str(tmp_path / "emb.npy"), pooling=pooling,
                          bidirectional=bidir, instruction=instr, batch_size=batch_size)


@pytest.mark.slow
@pytest.mark.parametrize("job", COMPARED, ids=_job_name)
def test_matches_llm2vec(job, model_dirs, reference, tmp_path):
  kind, pooling, bidir, instr = job
  ours = _ours(tmp_path, model_dirs[kind], pooling, bidir, instr)
  ref = reference[_job_name(job)]
  err = np.abs(ours - ref).max()
  assert ours.shape == ref.shape and ours.dtype == np.float32
  assert err < 1e-4, f"max abs diff {err:.2e} (scale {np.abs(ref).mean():.2f})"


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "weighted_mean"])
def test_qwen2_is_truly_bidirectional(pooling, model_dirs, reference, tmp_path):
  """llm2vec 0.2.3 never replaces transformers 4.44's causal mask for Qwen2: its "bidirectional"
  output equals its causal one. Ours equals that causal output only when asked to be causal."""
  ref_bi = reference[_job_name(("qwen2", pooling, True, ""))]
  ref_causal = reference[_job_name(("qwen2", pooling, False, ""))]
  assert np.abs(ref_bi - ref_causal).max() < 1e-5  # the peer bug, demonstrated
  ours_bi = _ours(tmp_path, model_dirs["qwen2"], pooling, True, "")
  ours_causal = _ours(tmp_path, model_dirs["qwen2"], pooling, False, "")
  assert np.abs(ours_causal - ref_bi).max() < 1e-4
  assert np.abs(ours_bi - ref_bi).max() > 1e-2


@pytest.mark.slow
def test_independent_of_batch_size_and_padding_side(model_dirs, tmp_path):
  from cxrclip_jax.eval.embedder import TextEmbedder
  from cxrclip_jax.export import hf
  from data_pipelines.tokenization import Llm2VecTokenizer
  module, params, _ = hf.load_text_encoder(model_dirs["llama"], pooling="weighted_mean")
  results = []
  for side in ("left", "right"):
    tok = Llm2VecTokenizer.from_model_dir(model_dirs["llama"], padding_side=side)
    for bs in (1, 2, 8):
      results.append(TextEmbedder(module, params, tok, batch_size=bs).embed(TEXTS, INSTRUCTION))
  for r in results[1:]:
    assert np.abs(r - results[0]).max() < 1e-5
