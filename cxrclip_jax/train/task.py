"""What a training stage supplies to the generic loop (train/loop.py): the one interface between them.

A task module (tasks/clip.py, tasks/mntp.py, ...) has `build(config, workdir, mesh, train=True)
-> Task`. Everything stage-specific lives there: the model and its init, pretrained weights,
which params train, the loss, host batch -> device batch, the training data, evaluators and the
export. The loop owns the rest: params created sharded, optimizer, step, resume, logging, the
non-finite guard, checkpoints, evaluation and final metrics — identically for every stage.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

from cxrclip_jax.train.step import LossFn


class TrainingError(RuntimeError):
  """A run cannot go on; the message is one line for the user."""


@dataclasses.dataclass
class Task:
  name: str
  model: Any                                    # flax module (params: model.init)
  init_fn: Callable[[], Any]                    # () -> boxed variables, for sharded creation
  loss_fn: LossFn                               # (trainable, frozen, batch, rng) -> (loss, aux)
  total_steps: int
  global_batch: int
  # start_step -> iterator of host-local numpy batches. When `data_in_checkpoint`, it is a Grain
  # iterator saved and restored with the state; otherwise batches are a pure function of the step.
  train_data: Callable[[int], Iterator[dict]]
  device_batch: Callable[[dict], dict]          # host batch -> global device arrays
  data_in_checkpoint: bool = False
  load_pretrained: Callable[[Any, Any], Any] = lambda params, shardings: params
  param_groups: tuple = ()
  layer_decay: dict | None = None
  post_update: Callable[[Any], Any] | None = None
  extra_metrics: Callable[[Any, Any], dict] | None = None
  # (all params, step) -> {name: metrics}; printed with `format_metrics(name, metrics)`.
  evaluate: Callable[[Any, int], dict] | None = None
  format_metrics: Callable[[str, dict], str] = lambda name, m: f"{name}: {m}"
  export: Callable[[Any, Any], None] | None = None  # (all params, out dir) -> writes it
  describe: str = ""                            # one line printed at start
