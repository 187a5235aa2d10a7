"""Token ids are the model directory's own, and chat wrappers follow llm2vec 0.2.3 exactly.

References: `tokenizers.Tokenizer.from_file(dir/tokenizer.json)` for ids, and llm2vec's own
`prepare_for_tokenization` (run in its venv) for the wrapper and eos-suffix rules.
"""
import json
import pathlib
import pickle
import subprocess

import numpy as np
import pytest
import tokenizers
import transformers

import hf_tiny
from data_pipelines.dir_tokenizer import DirTokenizer, TokenizerError
from data_pipelines.tokenization import WRAPPERS, Llm2VecTokenizer

REF_PYTHON = pathlib.Path(__file__).resolve().parents[1] / ".venv-llm2vec" / "bin" / "python"
REF_SCRIPT = pathlib.Path(__file__).resolve().parent / "reference" / "llm2vec_ref.py"
TEXTS = ["Stable 8 mm nodule", "ETT 4 cm above the carina.", "Effusion ~15% of the hemithorax; 2019 vs 2021.",
         "No acute cardiopulmonary process."]


@pytest.fixture(scope="module")
def custom_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("custom")
  return {k: hf_tiny.model_dir_with_custom_tokenizer(k, root / k) for k in ("llama", "qwen2", "mistral")}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_ids_are_the_tokenizer_files_own(kind, custom_dirs):
  d = custom_dirs[kind]
  ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
  tok = Llm2VecTokenizer.from_model_dir(d, wrapper="none")
  for text in TEXTS:
    assert tok.tokenizer(text)["input_ids"] == ref.encode(text).ids, text
    assert tok.tokenizer(text, add_special_tokens=False)["input_ids"] == ref.encode(text, add_special_tokens=False).ids
    # What the model sees: the whole row is the file's encoding of the (unwrapped) text.
    (row, n_pooled), = tok.encode_rows([text])
    assert row == ref.encode(text).ids and n_pooled == len(row) - 1  # all but the template's BOS
  assert tok.tokenizer.pad_token_id == tok.tokenizer.eos_token_id == ref.token_to_id("</s>")


def test_transformers_family_class_would_differ(custom_dirs):
  """The bug this guards against: transformers 5 builds Qwen2Tokenizer from `model_type` and
  splits digits that the directory's tokenizer.json keeps together."""
  d = custom_dirs["qwen2"]
  ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
  auto = transformers.AutoTokenizer.from_pretrained(d)
  if type(auto).__name__ != "Qwen2Tokenizer":
    pytest.fail(f"transformers {transformers.__version__} no longer substitutes Qwen2Tokenizer; "
                "drop this demonstration")
  assert auto("Stable 8 mm nodule")["input_ids"] != ref.encode("Stable 8 mm nodule").ids


@pytest.mark.parametrize("max_length", [2, 3, 5])
def test_truncation_keeps_room_for_the_template(max_length, custom_dirs):
  d = custom_dirs["llama"]
  ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
  ref.enable_truncation(max_length)
  tok = DirTokenizer(d)
  for text in TEXTS:
    assert tok(text, truncation=True, max_length=max_length)["input_ids"] == ref.encode(text).ids
    got = tok([text], truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"][0]
    assert got == ref.encode(text, add_special_tokens=False).ids


def test_pickles_for_grain_workers(custom_dirs):
  tok = Llm2VecTokenizer.from_model_dir(custom_dirs["mistral"], max_length=16)
  clone = pickle.loads(pickle.dumps(tok))
  for key, value in tok(TEXTS, "Embed:").items():
    np.testing.assert_array_equal(clone(TEXTS, "Embed:")[key], value)


def test_bad_tokenizer_directories(custom_dirs, tmp_path):
  with pytest.raises(TokenizerError, match="no tokenizer.json"):
    DirTokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(TokenizerError, match="could not be read"):
    DirTokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text((custom_dirs["llama"] / "tokenizer.json").read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|not-a-token|>"}))
  with pytest.raises(TokenizerError, match="eos_token '<|not-a-token|>'"):
    DirTokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text("{}")
  with pytest.raises(TokenizerError, match="names no eos_token"):
    DirTokenizer(tmp_path).set_pad_to_eos()
  with pytest.raises(ValueError, match="unknown wrapper 'chatml'"):
    Llm2VecTokenizer.from_model_dir(custom_dirs["llama"], wrapper="chatml")(["x"])


# (llm2vec config class, `_name_or_path` llm2vec keys on, our model_type, our explicit wrapper)
WRAPPER_CASES = [
    ("LlamaConfig", "meta-llama/Meta-Llama-3-8B-Instruct", "llama", "llama3"),
    ("LlamaConfig", "meta-llama/Meta-Llama-3-8B", "llama", "none"),
    ("LlamaConfig", "meta-llama/Llama-2-7b-chat-hf", "llama", "mistral"),
    ("MistralConfig", "mistralai/Mistral-7B-Instruct-v0.2", "mistral", "mistral"),
    ("GemmaConfig", "google/gemma-2-9b-it", "gemma", "gemma"),
    ("Qwen2Config", "Qwen/Qwen2-1.5B-Instruct", "qwen2", "qwen2"),
    ("Qwen2Config", "Qwen/Qwen2-7B-Instruct", "qwen2", "qwen2"),
    ("MistralConfig", "some/local-model", "mistral", "none"),
    ("GemmaConfig", "some/local-gemma", "gemma", "none"),
    ("Qwen2Config", "some/local-qwen", "qwen2", "none"),
]
JOINED = [" !@#$%^&*()Small left effusion. ", "Retrieve the impression: !@#$%^&*()No PTX, 8 mm nodule."]


@pytest.fixture(scope="module")
def llm2vec_prepared(tmp_path_factory):
  if not REF_PYTHON.exists():
    pytest.fail(f"{REF_PYTHON} missing: run `make ref-venv` (make test does)")
  out = tmp_path_factory.mktemp("prep")
  jobs = [dict(prepare=True, config_class=c, name_or_path=n, pooling=p, texts=JOINED, out=str(out / f"{i}-{p}.json"))
          for i, (c, n, _, _) in enumerate(WRAPPER_CASES) for p in ("mean", "eos_token")]
  (out / "jobs.json").write_text(json.dumps(jobs))
  proc = subprocess.run([str(REF_PYTHON), str(REF_SCRIPT), str(out / "jobs.json")], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {(i, p): json.loads((out / f"{i}-{p}.json").read_text())
          for i in range(len(WRAPPER_CASES)) for p in ("mean", "eos_token")}


@pytest.mark.parametrize("pooling", ["mean", "eos_token"])
@pytest.mark.parametrize("case", range(len(WRAPPER_CASES)), ids=lambda i: f"{WRAPPER_CASES[i][1]}")
def test_wrapper_and_eos_suffix_match_llm2vec(case, pooling, llm2vec_prepared):
  _, name, model_type, wrapper = WRAPPER_CASES[case]
  expected = llm2vec_prepared[(case, pooling)]
  for mode in ("auto", wrapper):  # llm2vec's rule by name, and the wrapper asked for by name
    tok = Llm2VecTokenizer(tokenizer=None, wrapper=mode, name_or_path=name, model_type=model_type, pooling=pooling)
    assert [tok.prepare(j) for j in JOINED] == expected, mode
  # An explicit wrapper applies whatever the directory is called (the released LLM2VEC4CXR's case).
  if wrapper != "none":
    tok = Llm2VecTokenizer(tokenizer=None, wrapper=wrapper, name_or_path="/models/LLM2VEC4CXR",
                           model_type=model_type, pooling="mean")
    prefix, suffix = WRAPPERS[wrapper]
    assert tok.prepare(JOINED[1]) == prefix + JOINED[1].strip() + suffix
