"""Text-task evaluation of report encoders, side by side (LLM2VEC4CXR's text evaluations).

  python -m cxrclip_jax.evaluate_text --model_dir=DIR [--model_dir=DIR2 ...] \
      [--data_dir=D] [--split=test] [--output=metrics.json] [--max_examples=N] [--batch_size=32]

Each DIR is an HF LLM directory (Llama/Qwen2/Mistral) or a BERT one (config.json model_type
"bert", embedded by its sentence-transformers pipeline, no instructions). An LLM directory is
embedded as its llm2vec_config.json says (pooling_mode, max_length, "bidirectional", which defaults
to true when the file exists); a raw LLM without that file is embedded causally with mean pooling,
which is what an unadapted decoder does best. Options after the directory override either:
DIR:causal, DIR:bidirectional, DIR:layers=10 (first 10 decoder layers), DIR:pooling=MODE,
DIR:max_length=N, combinable (DIR:bidirectional:layers=10). The sets are
`data_pipelines.text_tasks.eval_sets` of D's split (default: the embedded demo set, built on first
use); the table and metrics.json ({model: {task: metrics}}) come from `eval.text_tasks`.
--max_examples keeps the first N queries of each set (candidates unchanged). --statements=FILE
evaluates on hand-written statements instead (abbreviated <-> expanded, MC4 errors;
benchmarks/statements.jsonl: 48 written for this project, none from a dataset).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import sys
import time
from typing import Mapping, Sequence

from absl import app, flags, logging

from cxrclip_jax import embed
from cxrclip_jax.eval import text_tasks as metrics
from cxrclip_jax.models.pooling import POOLING_MODES

DEMO_IMAGE_SIZE = 128  # configs/llm2clip.py's demo set, so both stages share one build
_OPTION = re.compile(r"^(causal|bidirectional|layers=\d+|pooling=\w+|max_length=\d+)$")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One encoder to evaluate: a directory plus overrides of what it declares (None: its own)."""
  model_dir: str
  bidirectional: bool | None = None
  num_layers: int | None = None
  pooling: str | None = None
  max_length: int | None = None
  label: str = ""

  @classmethod
  def parse(cls, spec: str) -> "ModelSpec":
    """"DIR[:causal|:bidirectional][:layers=N][:pooling=MODE][:max_length=N]"; options are read
    from the right, so a directory name may itself hold a colon."""
    parts, options = spec.split(":"), []
    while len(parts) > 1 and _OPTION.match(parts[-1]):
      options.insert(0, parts.pop())
    kw = {}
    for opt in options:
      key, _, value = opt.partition("=")
      if key in ("causal", "bidirectional"):
        if "bidirectional" in kw:
          raise embed.InputError(f"{spec}: give one of :causal / :bidirectional")
        kw["bidirectional"] = key == "bidirectional"
      elif key == "pooling":
        if value not in POOLING_MODES:
          raise embed.InputError(f"{spec}: pooling {value!r} is not one of {', '.join(POOLING_MODES)}")
        kw["pooling"] = value
      else:
        if not int(value):
          raise embed.InputError(f"{spec}: {key} must be positive")
        kw["num_layers" if key == "layers" else key] = int(value)
    model_dir = ":".join(parts)
    name = pathlib.Path(model_dir.rstrip("/")).name or model_dir
    return cls(model_dir, label=":".join([name] + options), **kw)


def is_bert(model_dir) -> bool:
  path = pathlib.Path(model_dir) / "config.json"
  try:
    return json.loads(path.read_text()).get("model_type") == "bert"
  except (OSError, ValueError) as e:
    raise embed.InputError(f"{model_dir} is not an HF model directory ({path}: {e})") from None


def llm_settings(spec: ModelSpec) -> dict:
  """pooling / max_length / doc_max_length / bidirectional an LLM directory is evaluated with."""
  # An adapted encoder (it has the file) is bidirectional unless the file says otherwise; a raw
  # decoder was trained causal and embeds best that way.
  adapted = (pathlib.Path(spec.model_dir) / embed.LLM2VEC_CONFIG).is_file()
  defaults = dict(embed.LLM2VEC_DEFAULTS, bidirectional=adapted)
  return embed.resolve_settings(spec.model_dir, defaults, pooling=spec.pooling, bidirectional=spec.bidirectional,
                                max_length=spec.max_length)


def make_embedder(spec: ModelSpec, *, batch_size: int = 32, dtype: str = "float32"):
  """(TextEmbedder, a one-line description of how it embeds) for one spec."""
  from cxrclip_jax.eval.embedder import TextEmbedder
  from cxrclip_jax.export import bert_hf, hf
  from data_pipelines.tokenization import Llm2VecTokenizer
  if is_bert(spec.model_dir):
    if spec.bidirectional is not None or spec.num_layers is not None or spec.pooling is not None:
      raise embed.InputError(f"{spec.label}: a BERT directory takes only :max_length=N (its pipeline sets the rest)")
    embedder = bert_hf.load_embedder(spec.model_dir, batch_size=batch_size, max_length=spec.max_length, dtype=dtype)
    return embedder, f"BERT, {embedder.module.pooling} pooling, max_length {embedder.tokenizer.max_length}"
  s = llm_settings(spec)
  tokenizer = Llm2VecTokenizer.from_model_dir(spec.model_dir, max_length=s["max_length"], pooling=s["pooling"],
                                              doc_max_length=s["doc_max_length"])
  bos = tokenizer.tokenizer.bos_token_id
  module, params, _ = hf.load_text_encoder(spec.model_dir, pooling=s["pooling"], is_causal=not s["bidirectional"],
                                           num_layers=spec.num_layers, dtype=dtype, bos_token_id=bos)
  layers = module.config.num_hidden_layers
  how = (f"LLM, {s['pooling']} pooling, {'bidirectional' if s['bidirectional'] else 'causal'}, "
         f"max_length {s['max_length']}, {layers} layers")
  return TextEmbedder(module, params, tokenizer, batch_size=batch_size), how


def _labels(specs: Sequence[ModelSpec]) -> list[str]:
  """Column names: the specs' labels; where two collide (W1/export, W2/export), with the parent
  directory; still equal ones get #2, #3."""
  labels = [s.label or s.model_dir for s in specs]
  dups = {l for l in labels if labels.count(l) > 1}
  labels = [f"{pathlib.Path(s.model_dir.rstrip('/')).parent.name}/{l}" if l in dups and s.label else l
            for s, l in zip(specs, labels)]
  out = []
  for label in labels:
    name, n = label, 2
    while name in out:
      name, n = f"{label}#{n}", n + 1
    out.append(name)
  return out


def evaluate_dirs(model_specs: Sequence[str | ModelSpec], rows: Sequence[Mapping] = (), seed: int = 0, *,
                  statements: Sequence[Mapping] = (), batch_size: int = 32, dtype: str = "float32",
                  max_examples: int | None = None, log=print) -> dict[str, dict[str, dict]]:
  """{model label: {task: metrics}} of each encoder on the eval sets of `rows` (one split's
  `pipelines.read_split`), or of hand-written `statements` (`text_tasks.statement_sets`). The sets
  are built once; each model embeds their distinct texts once."""
  from data_pipelines import text_tasks
  specs = [ModelSpec.parse(s) if isinstance(s, str) else s for s in model_specs]
  start = time.perf_counter()
  sets = text_tasks.statement_sets(statements, seed) if statements else text_tasks.eval_sets(rows, seed)
  sets = metrics.limit_queries(sets, max_examples)
  distinct = len({p for s in sets.values() for p in metrics.set_texts(s)})
  source = f"{len(statements)} statements" if statements else f"{len(rows)} reports"
  log(f"eval sets of {source}: {sum(len(s.queries) for s in sets.values())} queries, {distinct} "
      f"distinct texts to embed; built in {time.perf_counter() - start:.1f} s")
  results: dict[str, dict[str, dict]] = {}
  for spec, label in zip(specs, _labels(specs)):
    start = time.perf_counter()
    embedder, how = make_embedder(spec, batch_size=batch_size, dtype=dtype)
    loaded = time.perf_counter()
    count = []

    def embed_fn(texts, instructions, embedder=embedder, count=count):
      count.append(len(texts))
      return embedder.embed(texts, instructions, progress=sys.stderr.isatty(), desc=label)

    results[label] = metrics.evaluate_sets(embed_fn, sets)
    log(f"{label}: {how}; loaded in {loaded - start:.1f} s, {sum(count)} texts embedded in "
        f"{time.perf_counter() - loaded:.1f} s")
    del embedder
  return results


def demo_data_dir() -> pathlib.Path:
  """The embedded demo set at the CLIP demo's image size, built on first use (as the trainer does)."""
  from data_pipelines import assets, prepare
  out = assets.cache_dir() / f"demo_data_{DEMO_IMAGE_SIZE}px"
  try:
    done = json.loads((out / "summary.json").read_text()).get("status") == "ok"
  except (OSError, ValueError):
    done = False
  if not done:
    print(f"building the demo set in {out} (once)", flush=True)
    prepare.run(prepare.Options(dataset="demo", output=str(out), image_size=DEMO_IMAGE_SIZE))
  return out


def read_rows(data_dir: str | None, split: str) -> list[dict]:
  from data_pipelines import pipelines
  data_dir = str(data_dir or demo_data_dir())
  sizes = pipelines.split_sizes(data_dir)
  if not sizes.get(split):
    raise embed.InputError(f"{data_dir} has no {split!r} records (splits: "
                           f"{', '.join(f'{k}={v}' for k, v in sizes.items())})")
  return pipelines.read_split(data_dir, split)


def read_statements(path: str) -> list[dict]:
  """Hand-written statements, one JSON object per line: {"expanded": str, "abbreviated": str,
  "errors": [str, ...]} (benchmarks/statements.jsonl); every line is checked."""
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except OSError as e:
    raise embed.InputError(f"--statements={path}: {e.strerror or e}") from None
  out = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      item = json.loads(line)
    except ValueError as e:
      raise embed.InputError(f"{path}:{n}: not JSON ({e})") from None
    texts = [item.get("expanded"), item.get("abbreviated")] + list(item.get("errors") or [None]) \
        if isinstance(item, dict) else [None]
    if not all(isinstance(t, str) and t.strip() for t in texts):
      raise embed.InputError(f'{path}:{n}: needs non-empty "expanded", "abbreviated" and a list of "errors"')
    out.append(item)
  if not out:
    raise embed.InputError(f"{path} holds no statements")
  return out


def _define_flags():
  """Defined only when run as a program: the training stages import this module too."""
  return dict(
      model_dir=flags.DEFINE_multi_string("model_dir", None, "Model directory, optionally with :causal, "
                                          ":bidirectional, :layers=N, :pooling=MODE, :max_length=N; repeatable."),
      data_dir=flags.DEFINE_string("data_dir", None, "Prepared dataset (default: the demo set, built on first use)."),
      split=flags.DEFINE_string("split", "test", "Split whose reports are evaluated."),
      statements=flags.DEFINE_string("statements", None, "Evaluate on hand-written statements (JSON lines, "
                                     "see read_statements) instead of a split's reports."),
      output=flags.DEFINE_string("output", None, "Write {model: {task: metrics}} here as JSON."),
      max_examples=flags.DEFINE_integer("max_examples", None, "Keep the first N queries of each set."),
      batch_size=flags.DEFINE_integer("batch_size", 32, "Texts per forward pass."),
      dtype=flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the eval sets (error injection, rewrites)."))


def main(argv, f) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["model_dir"].value:
    print("error: --model_dir is required", file=sys.stderr)
    return 2
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # jax's backend probing is no news to a user
  from cxrclip_jax import host_memory
  from cxrclip_jax.eval.retrieval import NonFiniteError
  from cxrclip_jax.export.keymap import KeyMismatchError
  from cxrclip_jax.export.safetensors_io import SafetensorsError
  host_memory.keep_freed_memory()
  try:
    if (f["max_examples"].value or 1) < 1 or f["batch_size"].value < 1:
      raise embed.InputError("--max_examples and --batch_size must be positive")
    specs = [ModelSpec.parse(s) for s in f["model_dir"].value]
    for spec in specs:
      is_bert(spec.model_dir)  # a missing directory fails before the sets take seconds to build
    statements = read_statements(f["statements"].value) if f["statements"].value else ()
    rows = () if statements else read_rows(f["data_dir"].value, f["split"].value)
    results = evaluate_dirs(specs, rows, f["seed"].value, statements=statements, batch_size=f["batch_size"].value,
                            dtype=f["dtype"].value, max_examples=f["max_examples"].value)
  except (embed.InputError, NonFiniteError, FileNotFoundError, KeyMismatchError, SafetensorsError, ValueError,
          OSError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message
    return 1
  print(metrics.format_table(results, details=True))
  if f["output"].value:
    out = pathlib.Path(f["output"].value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"metrics written to {out}")
  return 0


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: sys.exit(main(argv, _FLAGS)))
