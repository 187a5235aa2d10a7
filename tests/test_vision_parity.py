"""Flax vision towers vs PyTorch transformers (CLIP, SigLIP, DINOv2) on tiny random configs."""
import dataclasses
import functools
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_tiny
from cxrclip_jax import sharding
from cxrclip_jax.export import keymap, safetensors_io, vision_hf
from cxrclip_jax.models.vision import VisionTower, VitConfig

SIZE, BIG = 32, 48  # 4x4 patches of 8 px; 48 px (6x6) exercises position-embedding interpolation
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=SIZE, patch_size=8)
CASES = {
    "clip": lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(intermediate_size=64, **_TINY)),
    "siglip": lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(intermediate_size=64, **_TINY)),
    "siglip_nohead": lambda: transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(intermediate_size=64, vision_use_head=False, **_TINY)),
    "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, **_TINY)),
}


def _images(size, batch=2, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def _hf_forward(model, images, **kw):
  """(pooled, last hidden state) of an HF vision model; mean of the tokens where it has no pooler."""
  if not isinstance(model, transformers.Dinov2Model):  # DINOv2 always interpolates
    kw.setdefault("interpolate_pos_encoding", images.shape[1] != model.config.image_size)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), **kw)
  tokens = out.last_hidden_state.numpy()
  return (out.pooler_output.numpy() if out.pooler_output is not None else tokens.mean(1)), tokens


@functools.lru_cache(maxsize=None)
def _jitted(config, masked):
  """One compiled forward per config: equal configs (e.g. after a save/load) share it."""
  return jax.jit(lambda p, x, m: VisionTower(config).apply({"params": p}, x, patch_mask=m if masked else None))


def _ours(module, params, images, patch_mask=None):
  pooled, tokens = _jitted(module.config, patch_mask is not None)(params, jnp.asarray(images), patch_mask)
  return np.asarray(pooled), np.asarray(tokens)


def _err(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """case -> (randomized torch model, its save_pretrained directory)."""
  out = {}
  for case, make in CASES.items():
    model = make()
    hf_tiny.randomize_(model)
    out[case] = (model.eval(), hf_tiny.save(model, tmp_path_factory.mktemp("vision") / case))
  return out


@pytest.mark.parametrize("case, size", [(c, s) for c in sorted(CASES) for s in (SIZE, BIG)
                                        if (c, s) != ("siglip_nohead", SIZE)])  # same trunk as siglip
def test_matches_transformers(hf_dirs, case, size):
  model, path = hf_dirs[case]
  images = _images(size)
  module, params = vision_hf.load_vision_tower(path, image_size=size)
  assert module.config.pooling == {"clip": "cls", "siglip": "map", "siglip_nohead": "mean", "dinov2": "cls"}[case]
  pooled, tokens = _ours(module, params, images)
  ref_pooled, ref_tokens = _hf_forward(model, images)
  assert pooled.dtype == np.float32 and tokens.shape == ref_tokens.shape
  errs = _err(pooled, ref_pooled), _err(tokens, ref_tokens)
  print(f"{case} {size}px max abs err pooled {errs[0]:.2e} tokens {errs[1]:.2e}")
  assert max(errs) < 1e-4, f"{case} {size}px: pooled {errs[0]:.2e}, tokens {errs[1]:.2e}"


def test_dinov2_patch_mask_matches_bool_masked_pos(hf_dirs):
  model, path = hf_dirs["dinov2"]
  images, mask = _images(SIZE), np.random.default_rng(1).random((2, 16)) < 0.5
  module, params = vision_hf.load_vision_tower(path)
  pooled, tokens = _ours(module, params, images, patch_mask=jnp.asarray(mask))
  ref_pooled, ref_tokens = _hf_forward(model, images, bool_masked_pos=torch.from_numpy(mask))
  assert max(_err(pooled, ref_pooled), _err(tokens, ref_tokens)) < 1e-4


def test_resize_positions_is_torch_bicubic():
  pos = np.random.default_rng(0).standard_normal((1 + 25, 3)).astype(np.float32)
  for grid in (7, 3, 5):
    ours = vision_hf.resize_positions(pos, 1, grid)
    grid_t = torch.from_numpy(pos[1:]).reshape(1, 5, 5, 3).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid_t, size=(grid, grid), mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    np.testing.assert_allclose(ours[1:], ref, atol=1e-5)  # ours is computed in fp64, torch's in fp32
    np.testing.assert_array_equal(ours[0], pos[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_save_loads_in_transformers_with_same_outputs(hf_dirs, tmp_path, case):
  _, path = hf_dirs[case]
  module, params = vision_hf.load_vision_tower(path, image_size=BIG)  # the saved config says 48 px
  out = vision_hf.save_vision_tower(tmp_path / "out", module.config, params)
  assert not list(out.glob("*.bin"))
  reloaded, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
  assert type(reloaded).__name__ == {"clip": "CLIPVisionModel", "dinov2": "Dinov2Model"}.get(case, "SiglipVisionModel")
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  images = _images(BIG, seed=2)
  pooled, tokens = _ours(module, params, images)
  ref_pooled, ref_tokens = _hf_forward(reloaded.eval(), images)
  assert max(_err(pooled, ref_pooled), _err(tokens, ref_tokens)) < 1e-4
  module2, params2 = vision_hf.load_vision_tower(out)
  assert module2.config == module.config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_full_dual_tower_checkpoint_reads_vision_keys(tmp_path, caplog, family):
  text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=99,
              bos_token_id=0, eos_token_id=1, pad_token_id=1)
  vision = dict(intermediate_size=64, **_TINY)
  if family == "clip":
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
  else:
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
  hf_tiny.randomize_(model)
  path = hf_tiny.save(model.eval(), tmp_path / family)
  with caplog.at_level(logging.INFO):
    module, params = vision_hf.load_vision_tower(path)
  assert "checkpoint keys outside the vision tower left unused" in caplog.text  # reported, not silent
  images = _images(SIZE)
  pooled, tokens = _ours(module, params, images)
  ref_pooled, ref_tokens = _hf_forward(model.vision_model, images)
  assert max(_err(pooled, ref_pooled), _err(tokens, ref_tokens)) < 1e-4
  # Text keys are optional only beside `vision_model.` keys: in a bare vision checkpoint they are errors.
  tensors = {k[len("vision_model."):]: v for k, v in safetensors_io.read(path / "model.safetensors").items()
             if k.startswith("vision_model.")}
  bare = tmp_path / "bare"
  bare.mkdir()
  (bare / "config.json").write_text((path / "config.json").read_text())
  safetensors_io.write(bare / "model.safetensors", {**tensors, "text_model.final_layer_norm.weight": np.ones(4)})
  with pytest.raises(keymap.KeyMismatchError, match="text_model.final_layer_norm.weight"):
    vision_hf.load_vision_tower(bare)


@pytest.mark.parametrize("edit, message", [
    ("drop", "missing HF key 'encoder.layers.1.mlp.fc2.bias'"),
    ("extra", "unused HF keys: 'encoder.layers.9.mlp.fc2.bias'"),
    ("shape", "HF key 'encoder.layers.1.mlp.fc2.bias' has shape"),
])
def test_strict_keys_name_the_offender(hf_dirs, tmp_path, edit, message):
  _, path = hf_dirs["siglip"]
  tensors = dict(safetensors_io.read(path / "model.safetensors"))
  key = "encoder.layers.1.mlp.fc2.bias"
  if edit == "drop":
    del tensors[key]
  elif edit == "extra":
    tensors["encoder.layers.9.mlp.fc2.bias"] = tensors[key]
  else:
    tensors[key] = np.zeros(7, np.float32)
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  safetensors_io.write(tmp_path / "model.safetensors", tensors)
  with pytest.raises(keymap.KeyMismatchError, match=message):
    vision_hf.load_vision_tower(tmp_path)


def test_remat_wraps_every_layer_and_keeps_outputs(hf_dirs):
  module, params = vision_hf.load_vision_tower(hf_dirs["dinov2"][1], remat=True)
  images = jnp.asarray(_images(SIZE))
  reference = _ours(VisionTower(dataclasses.replace(module.config, remat=False)), params, images)
  np.testing.assert_array_equal(_ours(module, params, images)[0], reference[0])
  # The backward pass recomputes each layer: one checkpoint per layer in the gradient's program
  # (its numerics are JAX's to guarantee; compiling the gradient here would cost seconds).
  grad = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, images)[0])))(params)
  assert len(re.findall(r"= (?:remat\d*|checkpoint)\[", str(grad))) == module.config.num_hidden_layers


@pytest.mark.parametrize("case", ["siglip", "dinov2"])  # CLIP's params are a subset of these
def test_sharded_forward_equals_single_device(hf_dirs, case):
  assert jax.device_count() == 8
  module, params = vision_hf.load_vision_tower(hf_dirs[case][1])
  images = _images(SIZE, batch=4, seed=3)
  single = _ours(module, params, images)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.asarray(images))["params"])
  sharded, _ = sharding.shard_params(params, abstract, mesh)
  q = sharded["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]  # (embed, heads)
  assert tuple(q.sharding.spec) == ("fsdp", "tensor")
  with sharding.activate(mesh):
    fn = jax.jit(lambda p, x: module.apply({"params": p}, x))
    pooled, tokens = fn(sharded, sharding.global_batch({"x": images}, mesh)["x"])
  np.testing.assert_allclose(sharding.to_host(pooled), single[0], atol=1e-5)
  np.testing.assert_allclose(sharding.to_host(tokens), single[1], atol=1e-5)


def test_demo_config_shapes():
  """The tower `make demo` trains, built from configs/llm2clip.py as the trainer builds it."""
  from configs import llm2clip
  from cxrclip_jax.tasks import clip_setup
  config = llm2clip.get_config("demo")
  demo = clip_setup.vision_config(config)
  v, s = config.vision, config.data.image_size
  assert (demo.image_size, demo.patch_size, demo.hidden_size, demo.num_hidden_layers) == (
      s, v.patch_size, v.hidden_size, v.num_hidden_layers)
  (pooled, tokens), variables = jax.eval_shape(
      lambda: VisionTower(demo).init_with_output(jax.random.key(0), jnp.zeros((2, s, s, 3))))
  assert pooled.shape == (2, v.hidden_size) and tokens.shape == (2, (s // v.patch_size) ** 2, v.hidden_size)
  # Parameter count from the architecture: patch embedding, positions, blocks, final norm.
  d, m, n = v.hidden_size, v.intermediate_size, (s // v.patch_size) ** 2
  per_block = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
  expected = 3 * v.patch_size ** 2 * d + d + n * d + v.num_hidden_layers * per_block + 2 * d
  assert sum(x.size for x in jax.tree.leaves(variables)) == expected


def test_dropout_and_bf16_compute(hf_dirs):
  module, params = vision_hf.load_vision_tower(hf_dirs["siglip_nohead"][1], image_size=BIG)
  images = jnp.asarray(_images(BIG))
  pooled, _ = _ours(module, params, images)
  train = VisionTower(dataclasses.replace(module.config, dropout_rate=0.1, drop_path_rate=0.1))
  bf16 = VisionTower(dataclasses.replace(module.config, dtype="bfloat16"))
  run = jax.jit(lambda p: (train.apply({"params": p}, images, False, rngs={"dropout": jax.random.key(1)})[0],
                           bf16.apply({"params": p}, images)))
  dropped, (pooled16, tokens16) = run(params)
  assert _err(dropped, pooled) > 1e-3  # dropout and drop-path act when not deterministic
  assert pooled16.dtype == jnp.float32 and tokens16.dtype == jnp.bfloat16
  assert _err(pooled16, pooled) < 0.05 * float(np.abs(pooled).max())


def test_config_from_hf_variants():
  full = transformers.CLIPConfig(vision_config=dict(patch_size=14, image_size=336)).to_dict()
  config = VitConfig.from_hf(full)
  assert (config.family, config.patch_size, config.grid, config.pooling) == ("clip", 14, 24, "cls")
  assert VitConfig.from_hf({"model_type": "dinov2"}, pooling="mean").intermediate_size == 3072
  with pytest.raises(ValueError, match="SwiGLU"):
    VitConfig.from_hf({"model_type": "dinov2", "use_swiglu_ffn": True})
  with pytest.raises(ValueError, match="unsupported vision model_type 'vit'"):
    VitConfig.from_hf({"model_type": "vit"})
  with pytest.raises(ValueError, match="no CLS token"):
    VitConfig(family="siglip", pooling="cls")
