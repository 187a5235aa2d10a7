"""A BERT sentence encoder (all-MiniLM-L6-v2) as the CLIP text side: cached and full fine-tuning,
and the full-mode export reloading in transformers with the trained weights."""
import pathlib

import jax
import numpy as np
import pytest
import torch
import transformers

from cxrclip_jax import tasks
from cxrclip_jax.export import __main__ as export_cli
from cxrclip_jax.export import bert_hf
from test_clip_train import _log, dataset, tiny_config  # noqa: F401 (the module fixture)


def bert_config(dataset, minilm, **overrides):
  return tiny_config(dataset, minilm, **{"text.family": "bert", "train.checkpoint_every": 0, **overrides})


@pytest.fixture(scope="module")
def minilm(asset):
  return pathlib.Path(asset("minilm"))


@pytest.mark.slow
def test_cached_minilm_text_side_trains_and_retrieves(dataset, minilm, tmp_path):
  config = bert_config(dataset, minilm, **{"train.steps": 30, "train.log_every": 5, "optim.lr": 3e-3})
  results = tasks.run(config, tmp_path)
  log = _log(tmp_path)
  assert np.mean([r["loss"] for r in log[-2:]]) < 0.9 * log[0]["loss"], [r["loss"] for r in log]
  for task in ("i2t_clinical", "t2i_clinical"):
    assert results["test"][task]["R@1"] > 2 * results["test"][task]["chance"]["R@1"], results["test"][task]


@pytest.mark.slow
def test_full_minilm_text_side_exports_what_it_trained(dataset, minilm, tmp_path):
  config = bert_config(dataset, minilm, **{"text.mode": "full", "train.steps": 2, "optim.warmup_steps": 0,
                                           "optim.lr": 1e-3})
  tasks.run(config, tmp_path / "w")
  run, step = tasks.load(tmp_path / "w")
  assert step == 2
  params = jax.device_get(run.state.params["text_encoder"])
  start = bert_hf.load_bert(minilm)[1]  # what training started from
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start)))
  assert moved > 1e-4  # the BERT itself trained

  export_cli.export(run, tmp_path / "out")
  model, info = transformers.BertModel.from_pretrained(tmp_path / "out" / "text", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  texts = ["Small right pleural effusion.", "No acute cardiopulmonary process. Heart size is normal."]
  tok = bert_hf.BertTokenizer.from_model_dir(minilm, max_length=32)(texts)
  with torch.no_grad():
    hidden = model.eval()(input_ids=torch.tensor(tok["input_ids"]),
                          attention_mask=torch.tensor(tok["attention_mask"])).last_hidden_state.numpy()
  mask = tok["attention_mask"][..., None]
  ref = (hidden * mask).sum(1) / mask.sum(1)
  ref /= np.linalg.norm(ref, axis=-1, keepdims=True)  # MiniLM's pipeline normalizes
  encoder = bert_hf.load_bert(minilm)[0]  # the same module, with the trained params
  mine = encoder.apply({"params": params}, tok["input_ids"], tok["attention_mask"], tok["embed_mask"])
  np.testing.assert_allclose(np.asarray(mine), ref, atol=1e-5)
