"""Device mesh, logical-axis rules and batch sharding: the only module that touches jax.sharding.

Sharding is data: params and activations carry logical axis names (set in `models/`), and a
rules table maps them onto mesh axes: `config.sharding_rules` (DEFAULT_RULES below unless a
config says otherwise) beside the mesh shape `config.mesh`. `data` is pure data parallelism, `fsdp` shards
params (and the batch) ZeRO-3 style, `tensor` is Megatron-style tensor parallelism.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None: replicated). Order matters only for readability.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    # params
    ("embed", "fsdp"),
    ("embed_out", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("latents", None),
    ("norm", None),
    ("patch", None),
    ("pos", None),
)


def rules(config) -> tuple[tuple[str, Any], ...]:
  """The config's logical-axis rules, checked: every logical axis the models use, mesh axes only."""
  table = config.get("sharding_rules") or DEFAULT_RULES
  out = []
  for name, axes in table:
    axes = None if axes is None else (axes if isinstance(axes, str) else tuple(axes))
    named = (axes,) if isinstance(axes, str) else (axes or ())
    if set(named) - set(MESH_AXES):
      raise ValueError(f"sharding_rules: {name!r} -> {axes!r} names axes outside the mesh {MESH_AXES}")
    out.append((str(name), axes))
  missing = [n for n, _ in DEFAULT_RULES if n not in dict(out)]
  if missing:
    raise ValueError(f"sharding_rules has no rule for the logical axes {missing}")
  return tuple(out)


def check_fsdp_coverage(abstract_params, shardings, mesh: Mesh, min_size: int = 1_000_000) -> None:
  """With fsdp > 1, a parameter over `min_size` elements left fully replicated is a rules bug
  (it costs that memory on every device): fail naming them."""
  if mesh.shape["fsdp"] == 1:
    return
  flat = jax.tree_util.tree_leaves_with_path(abstract_params)
  specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  bad = [f"{jax.tree_util.keystr(path)} {tuple(x.shape)}" for (path, x), s in zip(flat, specs)
         if math.prod(x.shape) > min_size and s.is_fully_replicated]
  if bad:
    raise ValueError(f"fsdp={mesh.shape['fsdp']} but {len(bad)} parameters over {min_size:,} elements are "
                     f"replicated on every device: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                     f"give their logical axes a rule onto fsdp (config.sharding_rules)")


def opt_state_shardings(tx, params, param_shardings, mesh: Mesh):
  """Shardings of `tx.init(params)`: a leaf that is a copy of a param (Adam's moments: the param's
  key path ends its own path, same shape) is laid out like that param; the rest (step counts,
  masked-out entries) is replicated."""
  abstract = jax.eval_shape(tx.init, params)
  keys = lambda path: tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
  by_path = {keys(path): (s, x.shape) for (path, x), s in zip(
      jax.tree_util.tree_leaves_with_path(params),
      jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)))}
  def pick(path, leaf):
    k = keys(path)
    for i in range(len(k)):
      found = by_path.get(k[i:])
      if found is not None and tuple(found[1]) == tuple(leaf.shape):
        return found[0]
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, abstract)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh over all devices with axes (data, fsdp, tensor); one size may be -1 (fill the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(shape)}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot fill mesh {dict(shape)}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=DEFAULT_RULES):
  """Makes the mesh and rules visible to `nn.with_logical_constraint` inside models."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _spec_for(shape: Sequence[int], logical: Sequence[str | None] | None, mesh: Mesh, rules) -> P:
  """PartitionSpec for one array; mesh axes that do not divide a dimension are dropped."""
  if logical is None:
    return P()
  table = dict(rules)
  used, spec = set(), []
  for dim, name in zip(shape, logical):
    axes = table.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = []
    for a in axes:
      if a in used or mesh.shape[a] == 1:
        continue
      if dim % (math.prod(mesh.shape[k] for k in kept) * mesh.shape[a]) == 0:
        kept.append(a)
    used.update(kept)
    spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*spec)


def param_shardings(abstract_boxed, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a tree of `nn.LogicallyPartitioned` (or bare) abstract arrays."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return NamedSharding(mesh, _spec_for(leaf.value.shape, leaf.names, mesh, rules))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def init_sharded(init_fn: Callable[[], Any], mesh: Mesh, rules=DEFAULT_RULES):
  """Runs `init_fn` (returning boxed variables) under jit with params created already sharded.

  Returns (unboxed variables, their shardings).
  """
  abstract = jax.eval_shape(init_fn)
  shardings = nn.unbox(param_shardings(abstract, mesh, rules))
  # out_shardings places every param; no rules are active here, so unboxing adds no constraints.
  variables = jax.jit(lambda: nn.unbox(init_fn()), out_shardings=shardings)()
  return variables, shardings


def shard_params(params, abstract_boxed, mesh: Mesh, rules=DEFAULT_RULES):
  """Places host (numpy) params onto the mesh according to their logical axes."""
  shardings = nn.unbox(param_shardings(abstract_boxed, mesh, rules))
  return jax.tree.map(jax.device_put, params, shardings), shardings


def place_loaded(params, shardings, loaded: Mapping):
  """`params` (already on the mesh) with every leaf present in the nested host dict `loaded`
  replaced. Each device receives only its own slice (`make_array_from_callback`), so no process
  ever holds a gathered copy of sharded params; leaves not in `loaded` keep their fresh init."""
  def put(x, s, value):
    value = np.asarray(value, x.dtype)
    if value.shape != x.shape:
      raise ValueError(f"loaded shape {value.shape} does not match the model's {x.shape}")
    return jax.make_array_from_callback(x.shape, s, lambda idx: value[idx])
  out = dict(params)
  for k, v in loaded.items():
    out[k] = place_loaded(params[k], shardings[k], v) if isinstance(v, Mapping) else put(params[k], shardings[k], v)
  return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded on the batch dimension."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def batch_divisor(mesh: Mesh) -> int:
  """Global batch sizes must be a multiple of this."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch_from_full(full: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Every process holds the whole global batch (e.g. texts to embed); each supplies its shards."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_callback(np.shape(v), sharding, lambda idx, v=v: np.asarray(v)[idx])
          for k, v in full.items()}


def to_host(x: jax.Array) -> np.ndarray:
  """The full value of a global array on every process (all-gathers across hosts when needed)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
