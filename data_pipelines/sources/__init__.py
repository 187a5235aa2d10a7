"""Dataset adapters: each reads one on-disk layout into the shared manifest schema (`schema.Record`).

    collection = sources.load("mimic_cxr", root)   # records + skips + notes, policies applied
"""
from __future__ import annotations

import importlib
import pathlib

from data_pipelines.sources import schema
from data_pipelines.sources.schema import Collection, Record, Skip, SourceError, SPLITS

# dataset name -> module with `read(root, **options) -> Collection`.
ADAPTERS = {
    "mimic_cxr": "data_pipelines.sources.mimic_cxr",
    "chexpert_plus": "data_pipelines.sources.chexpert_plus",
    "iu_xray": "data_pipelines.sources.iu_xray",
    "padchest": "data_pipelines.sources.padchest",
    "manifest": "data_pipelines.sources.manifest",
    "demo": "data_pipelines.sources.demo_set",
}


def load(dataset: str, root: str | pathlib.Path | None, *, frontal_only: bool = True, **options) -> Collection:
  """Reads `dataset` under `root` and applies the shared policies (`schema.finalize`)."""
  if dataset not in ADAPTERS:
    raise SourceError(f"unknown dataset {dataset!r}; known: {', '.join(ADAPTERS)}")
  adapter = importlib.import_module(ADAPTERS[dataset])
  if root is not None and not pathlib.Path(root).is_dir():
    raise SourceError(f"--root {root} is not a directory")
  if root is None and dataset != "demo":  # The demo reads the asset cache by default.
    raise SourceError(f"--dataset={dataset} needs --root")
  collection = adapter.read(pathlib.Path(root) if root is not None else None, **options)
  return schema.finalize(collection, frontal_only=frontal_only)


__all__ = ["ADAPTERS", "Collection", "Record", "Skip", "SourceError", "SPLITS", "load"]
