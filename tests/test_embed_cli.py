"""The `python -m cxrclip_jax.embed` contract: output file, and one-line errors on bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

import hf_tiny


def run_embed(*args):
  proc = subprocess.run([sys.executable, "-m", "cxrclip_jax.embed", *args], capture_output=True, text=True,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, asset):
  return hf_tiny.model_dir_with_tokenizer("mistral", tmp_path_factory.mktemp("cli") / "m", asset)


def _jsonl(path, lines):
  path.write_text("".join(l + "\n" for l in lines))
  return str(path)


def test_writes_float32_embeddings_in_input_order(model_dir, tmp_path):
  texts = ["Left basilar atelectasis.", "No acute disease.", "Cardiomegaly without edema."]
  inp = _jsonl(tmp_path / "t.jsonl", [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)])
  out = tmp_path / "sub" / "emb.out"
  code, stdout, stderr = run_embed(f"--model_dir={model_dir}", f"--input={inp}", f"--output={out}",
                                   "--pooling=weighted_mean", "--bidirectional=false", "--batch_size=2")
  assert code == 0, stderr
  emb = np.load(out)
  assert emb.shape == (3, 64) and emb.dtype == np.float32
  inp2 = _jsonl(tmp_path / "t2.jsonl", [json.dumps({"text": texts[1]})])
  code, _, stderr = run_embed(f"--model_dir={model_dir}", f"--input={inp2}", f"--output={tmp_path / 'one.npy'}",
                              "--pooling=weighted_mean", "--bidirectional=false")
  assert code == 0, stderr
  np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], emb[1], atol=1e-5)


@pytest.mark.parametrize("problem,expect", [
    ("missing_dir", "does not exist"),
    ("pickle_only", "only pickle weights"),
    ("bad_json", "line 2: not valid JSON"),
    ("no_text_field", "line 1: expected a JSON object with a \"text\" field"),
    ("empty_text", "line 2: empty text"),
    ("missing_input", "input file"),
])
def test_bad_input_gives_one_line_error(problem, expect, model_dir, tmp_path):
  good = json.dumps({"text": "Normal chest."})
  inp = _jsonl(tmp_path / "t.jsonl", [good, good])
  mdir = str(model_dir)
  if problem == "missing_dir":
    mdir = str(tmp_path / "nope")
  elif problem == "pickle_only":
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((model_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    mdir = str(d)
  elif problem == "bad_json":
    inp = _jsonl(tmp_path / "t.jsonl", [good, '{"text": "unterminated'])
  elif problem == "no_text_field":
    inp = _jsonl(tmp_path / "t.jsonl", [json.dumps({"report": "x"})])
  elif problem == "empty_text":
    inp = _jsonl(tmp_path / "t.jsonl", [good, json.dumps({"text": "   "})])
  elif problem == "missing_input":
    inp = str(tmp_path / "absent.jsonl")
  code, stdout, stderr = run_embed(f"--model_dir={mdir}", f"--input={inp}", f"--output={tmp_path / 'e.npy'}")
  assert code != 0
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], stderr
  assert not (tmp_path / "e.npy").exists()


def test_tokenizer_beyond_the_embedding_table_is_one_line_error(tmp_path):
  model_dir = hf_tiny.model_dir_with_custom_tokenizer("llama", tmp_path / "m", vocab_size=40)
  inp = _jsonl(tmp_path / "t.jsonl", [json.dumps({"text": "Stable 8 mm nodule."})])
  code, _, stderr = run_embed(f"--model_dir={model_dir}", f"--input={inp}", f"--output={tmp_path / 'e.npy'}")
  assert code == 1 and stderr.count("\n") == 1, stderr
  assert "outside the embedding table of 40 rows" in stderr and not (tmp_path / "e.npy").exists()


def _with_llm2vec_config(model_dir, out, config):
  """A copy of model_dir declaring `config` in its llm2vec_config.json."""
  import shutil
  shutil.copytree(model_dir, out)
  (out / "llm2vec_config.json").write_text(json.dumps(config))
  return out


DECLARED = {"pooling_mode": "weighted_mean", "max_length": 6, "doc_max_length": 400, "skip_instruction": True,
            "bidirectional": False}
LONG_TEXTS = ["Small left pleural effusion with adjacent atelectasis and no pneumothorax.",
              "Cardiomegaly. Mild pulmonary vascular congestion, no focal consolidation."]


def test_directory_settings_are_the_default_and_flags_override_them(model_dir, tmp_path):
  from cxrclip_jax import embed
  declared = _with_llm2vec_config(model_dir, tmp_path / "declared", DECLARED)
  inp = _jsonl(tmp_path / "t.jsonl", [json.dumps({"text": t}) for t in LONG_TEXTS])

  def cli(name, *flags):
    code, stdout, stderr = run_embed(f"--model_dir={declared}", f"--input={inp}", f"--output={tmp_path / name}",
                                     *flags)
    assert code == 0, stderr
    return np.load(tmp_path / name), stdout

  def ref(name, **settings):  # the plain directory told everything explicitly
    return embed.embed_file(str(model_dir), inp, str(tmp_path / name), **settings)

  from_dir, stdout = cli("dir.npy")
  assert "pooling weighted_mean, causal, max_length 6" in stdout
  np.testing.assert_allclose(from_dir, ref("r1.npy", pooling="weighted_mean", bidirectional=False, max_length=6),
                             atol=1e-5)
  plain = ref("r2.npy", pooling="mean", bidirectional=True, max_length=512)
  assert np.abs(plain - from_dir).max() > 1e-3  # the settings matter for these texts
  # Every flag given overrides the file, even where it equals the flag's default.
  overridden, stdout = cli("over.npy", "--pooling=mean", "--bidirectional=true", "--max_length=512")
  assert "pooling mean, bidirectional, max_length 512" in stdout
  np.testing.assert_allclose(overridden, plain, atol=1e-5)
  # One flag overrides only itself: causal weighted-mean from the file, the full length from the flag.
  partly, stdout = cli("partly.npy", "--max_length=512")
  assert "pooling weighted_mean, causal, max_length 512" in stdout
  np.testing.assert_allclose(partly, ref("r3.npy", pooling="weighted_mean", bidirectional=False, max_length=512),
                             atol=1e-5)


def test_embed_file_reads_the_directory_when_given_none(model_dir, tmp_path):
  from cxrclip_jax import embed
  declared = _with_llm2vec_config(model_dir, tmp_path / "declared", {"pooling_mode": "weighted_mean",
                                                                      "max_length": 6})
  inp = _jsonl(tmp_path / "t.jsonl", [json.dumps({"text": t}) for t in LONG_TEXTS])
  ours = embed.embed_file(str(declared), inp, str(tmp_path / "a.npy"))  # no "bidirectional": llm2vec's true
  ref = embed.embed_file(str(model_dir), inp, str(tmp_path / "b.npy"), pooling="weighted_mean", bidirectional=True,
                         max_length=6)
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  assert embed.resolve_settings(model_dir) == embed.LLM2VEC_DEFAULTS  # no file: llm2vec's defaults


@pytest.mark.parametrize("config,expect", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"pooling_mode": "max"}), "pooling_mode 'max' is not one of"),
    (json.dumps({"max_length": 0}), "max_length must be a positive integer"),
    (json.dumps({"bidirectional": "yes"}), "bidirectional must be true or false"),
])
def test_bad_llm2vec_config_names_the_file(config, expect, tmp_path):
  from cxrclip_jax import embed
  (tmp_path / "llm2vec_config.json").write_text(config)
  with pytest.raises(embed.InputError, match="llm2vec_config.json") as e:
    embed.read_llm2vec_config(tmp_path)
  assert expect in str(e.value)
