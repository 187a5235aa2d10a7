"""Orbax checkpoints: the train state and the Grain iterator state in one step directory.

Saving both together means a resumed run continues with exactly the batches it would have seen.
Restoring needs the abstract state (shapes + shardings), so params come back already sharded.
"""
from __future__ import annotations

import pathlib

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


class Checkpointer:
  def __init__(self, directory: str | pathlib.Path | epath.Path, keep: int = 3, every: int = 1000):
    # epath: a local directory or an object-store one (gs://...), which Orbax writes directly.
    self.directory = epath.Path(directory)
    if "://" not in str(directory):
      self.directory = self.directory.absolute()
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def maybe_save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    if not force and not self.due(step):
      return False
    if step in self.manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    return True

  def restore(self, step: int, abstract_state, data_iterator=None):
    """State (sharded like `abstract_state`) at `step`; `data_iterator` is restored in place."""
    if step not in self.manager.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                            f"(have: {self.manager.all_steps() or 'none'})")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointError(f"checkpoint {self.directory / str(step)} does not match this config: "
                            f"{' '.join(str(e).split())[:300]}") from None
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying shardings: what Orbax needs to restore arrays sharded."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
