"""The text encoder on 8 CPU devices equals the 1-device result; params really are sharded."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_tiny
from cxrclip_jax import sharding
from cxrclip_jax.export import hf


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  # 4 heads / 2 KV heads / 96 MLP / 256 vocab: every tensor-parallel dimension divides by 2.
  model = hf_tiny.make_model("llama_gqa")
  src = hf_tiny.save(model, tmp_path_factory.mktemp("enc") / "m")
  module, params, _ = hf.load_text_encoder(src, pooling="weighted_mean")
  ids, mask = hf_tiny.random_batch(8, 12, seed=7)
  emb = np.zeros_like(mask)
  emb[:, -5:] = mask[:, -5:]
  batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32), "embed_mask": emb.astype(np.int32)}
  single = np.asarray(module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["embed_mask"]))
  return module, params, batch, single


@pytest.mark.parametrize("shape", [{"data": 2, "fsdp": 2, "tensor": 2}, {"data": 4, "tensor": 2}],
                         ids=["d2f2t2", "d4t2"])
def test_sharded_forward_equals_single_device(encoder, shape):
  assert jax.device_count() == 8
  module, params, batch, single = encoder
  mesh = sharding.make_mesh(shape)
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *hf._dummy_text_inputs())["params"])
  sharded, shardings = sharding.shard_params(params, abstract, mesh)
  q = sharded["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]  # (embed, heads)
  expected_spec = ("fsdp", "tensor") if shape.get("fsdp", 1) > 1 else (None, "tensor")
  assert tuple(q.sharding.spec) == expected_spec
  assert len({s.data.shape for s in q.addressable_shards}) == 1
  assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 2  # really split across devices
  with sharding.activate(mesh):
    fn = jax.jit(lambda p, b: module.apply({"params": p}, b["input_ids"], b["attention_mask"], b["embed_mask"]))
    out = fn(sharded, sharding.global_batch(batch, mesh))
  assert out.sharding.spec[0] in (("data", "fsdp"), "data")
  np.testing.assert_allclose(sharding.to_host(out), single, atol=1e-5)


def test_init_sharded_creates_params_on_the_mesh(encoder):
  module, _, batch, _ = encoder
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  variables, shardings = sharding.init_sharded(
      lambda: module.init(jax.random.key(0), *hf._dummy_text_inputs()), mesh)
  emb = variables["params"]["model"]["embed_tokens"]["weight"]  # (vocab, embed)
  assert tuple(emb.sharding.spec) == ("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 2, emb.shape[1] // 2)


def test_mesh_validation():
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh({"data": 3, "tensor": 2})
  assert sharding.make_mesh({"data": -1, "tensor": 2}).shape["data"] == 4


def test_rules_come_from_the_config_and_are_checked():
  import ml_collections
  c = ml_collections.ConfigDict({"sharding_rules": [list(r) for r in sharding.DEFAULT_RULES]})  # as JSON gives it
  assert sharding.rules(c) == sharding.DEFAULT_RULES
  assert sharding.rules(ml_collections.ConfigDict()) == sharding.DEFAULT_RULES
  with pytest.raises(ValueError, match=r"'embed' -> 'model' names axes outside the mesh"):
    sharding.rules(ml_collections.ConfigDict({"sharding_rules": (("embed", "model"),)}))
  with pytest.raises(ValueError, match=r"no rule for the logical axes \['act_batch'"):
    sharding.rules(ml_collections.ConfigDict({"sharding_rules": sharding.DEFAULT_RULES[1:]}))


def test_fsdp_run_fails_naming_a_big_replicated_param():
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      big = self.param("big", nn.with_logical_partitioning(nn.initializers.zeros, ("norm", "norm")), (1024, 1025))
      ok = self.param("ok", nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "mlp")), (1024, 1024))
      return x @ big[:, :1] + x @ ok[:, :1]
  init = lambda: Model().init(jax.random.key(0), jnp.zeros((1, 1024)))
  variables, shardings = sharding.init_sharded(init, mesh)
  with pytest.raises(ValueError, match=r"1 parameters over 1,000,000 elements are replicated .*\['big'\] \(1024, 1025\)"):
    sharding.check_fsdp_coverage(variables["params"], shardings["params"], mesh)
  sharding.check_fsdp_coverage(variables["params"], shardings["params"], sharding.make_mesh({"data": 8}))
