"""Step-indexed batches for the three LLM2VEC4CXR text stages: MNTP, SimCSE, supervised contrastive.

Each maker is a pure function of (seed, step): `batch(step)` needs no iterator state, so a resumed
run continues exactly at its step number, and no Grain state has to be checkpointed. Multi-process:
`batch(step, process_index, process_count)` returns rows [p*B/P, (p+1)*B/P) of the global batch;
every random draw that touches a row is keyed by its global position in the batch, so the slices
of all processes concatenated equal the one-process batch. Epochs are reshuffled from
(seed, epoch); the last incomplete batch of an epoch is dropped. Numpy only.

Recipes (McGill-NLP/llm2vec):
- MNTP (`experiments/run_mntp.py`): every text tokenized with the tokenizer's special tokens, the
  ids concatenated and cut into fixed-length chunks (HF `group_texts`; no padding, remainder
  dropped), masked per draw by HF's `DataCollatorForLanguageModeling` (`pipeline_transforms.mntp_mask`).
- SimCSE (`experiments/run_simcse.py`): B distinct texts; the model encodes the batch twice, the
  two dropout draws being the positive pair.
- Supervised (`experiments/run_supervised.py`): (instructed query, positive, hard negatives),
  one task per global batch (`text_tasks.TaskBatchSampler`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from typing import Iterable, Mapping, Sequence

import numpy as np
from etils import epath

from data_pipelines import reports, text_tasks
from data_pipelines.pipeline_transforms import fit_tokenizer, mntp_mask
from data_pipelines.tokenization import Llm2VecTokenizer

# Salts that keep the order stream and the per-row streams of one seed independent.
_ORDER, _ROWS = 0, 1


def process_rows(batch_size: int, process_index: int, process_count: int) -> range:
  """Global row positions [p*B/P, (p+1)*B/P) of this process's slice."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by process_count {process_count}")
  per = batch_size // process_count
  return range(process_index * per, (process_index + 1) * per)


def padded_length(rows: Sequence[tuple[list[int], int]], max_length: int, multiple: int) -> int:
  """The batch's L: its longest tokenized row rounded up to `multiple` (at most max_length);
  multiple 0 pads to max_length. Short texts (a shorthand sentence is ~20 tokens) then cost a
  fraction of max_length's compute and activation memory, and the few distinct L values keep
  recompiles few. Computed from the *global* batch, so that every process pads alike."""
  if not multiple:
    return max_length
  longest = max((len(ids) for ids, _ in rows), default=1)
  return min(max_length, -(-longest // multiple) * multiple)


class _Epochs:
  """Step -> the global batch's item indices: a fresh permutation of `n` items each epoch."""

  def __init__(self, n: int, batch_size: int, seed: int, what: str):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < batch_size:
      raise ValueError(f"{n} {what} are fewer than one batch of {batch_size}")
    self.n, self.batch_size, self.seed = n, batch_size, seed
    self.steps_per_epoch = n // batch_size
    self._cached: tuple[int, np.ndarray] | None = None  # the permutation of the last epoch asked

  def indices(self, step: int) -> np.ndarray:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._cached is None or self._cached[0] != epoch:
      self._cached = (epoch, np.random.default_rng([self.seed, _ORDER, epoch]).permutation(self.n))
    return self._cached[1][i * self.batch_size:(i + 1) * self.batch_size]


def _base_tokenizer(tokenizer):
  return tokenizer.tokenizer if isinstance(tokenizer, Llm2VecTokenizer) else tokenizer


# ---- MNTP ------------------------------------------------------------------------------------------


def mntp_chunks(texts: Iterable[str], tokenizer, length: int, *, tokenize_batch: int = 1024) -> np.ndarray:
  """int32 (N, length): the token stream of all `texts`, cut into chunks (HF `group_texts`).

  Each text is tokenized as run_mntp.py's `tokenize_function` does: the base tokenizer (an
  `Llm2VecTokenizer`'s inner one: no chat wrapper, no separator, no truncation) with its special
  tokens, so every report starts with BOS. Blank texts are skipped (they would add only special
  tokens). One difference from HF: `datasets.map(batched=True)` drops a remainder per group of
  1,000 texts; here only the stream's single final remainder is dropped.
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  base = _base_tokenizer(tokenizer)
  texts = [t for t in texts if t and not t.isspace()]
  parts = [np.asarray([], np.int64)]
  for start in range(0, len(texts), tokenize_batch):
    ids = base(texts[start:start + tokenize_batch])["input_ids"]
    parts.extend(np.asarray(row, np.int64) for row in ids)
  stream = np.concatenate(parts)
  n = len(stream) // length
  return stream[:n * length].reshape(n, length).astype(np.int32)


class MntpBatches:
  """Masked-next-token-prediction batches of chunks (`mntp_chunks`).

  `batch(step)`: input_ids (masked), attention_mask (all ones), labels (the original id where
  selected, -100 elsewhere): int32 (B/P, L). Masking is HF's collator: every non-special token is
  selected with `mlm_probability`; of the selected, `mask_replace_prob` become `mask_token_id`,
  `random_replace_prob` a uniform id in [0, vocab_size), the rest stay. A chunk is masked afresh
  each time it is drawn (HF masks in the collator), from (seed, step, row).

  all_mask: llm2vec's `data_collator_type="all_mask"` (`DataCollatorForLanguageModelingWithFullMasking`,
    used in its Mistral config): the same Bernoulli(`mlm_probability`) selection of non-special
    tokens, every selected token replaced by the mask token (no random, none kept); the
    replacement probabilities are then ignored. llm2vec pairs it with `mlm_probability=0.8`
    (train_configs/mntp/Mistral.json): pass that explicitly, it is not implied.
  special_ids: ids never selected. run_mntp.py passes the tokenizer's `special_tokens_mask`, i.e.
    the tokens its template inserted (BOS/EOS); `all_special_ids` of the tokenizer is the usual
    choice (it also covers pad and additional specials).
  """

  def __init__(self, chunks: np.ndarray, batch_size: int, seed: int, *, mask_token_id: int, vocab_size: int,
               special_ids: Sequence[int], mlm_probability: float = 0.2, mask_replace_prob: float = 0.8,
               random_replace_prob: float = 0.1, all_mask: bool = False):
    chunks = np.asarray(chunks)
    if chunks.ndim != 2:
      raise ValueError(f"chunks must be (N, L), got shape {chunks.shape}")
    if not 0.0 <= mlm_probability <= 1.0:
      raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    if not all_mask and (mask_replace_prob < 0 or random_replace_prob < 0 or
                         mask_replace_prob + random_replace_prob > 1.0):
      raise ValueError("mask_replace_prob + random_replace_prob must be in [0, 1] (each >= 0), got "
                       f"{mask_replace_prob} + {random_replace_prob}")
    self.chunks, self.batch_size, self.seed = chunks.astype(np.int32), batch_size, seed
    self._order = _Epochs(len(chunks), batch_size, seed, "chunks")
    self.steps_per_epoch = self._order.steps_per_epoch
    replace, random_ = (1.0, 0.0) if all_mask else (mask_replace_prob, random_replace_prob)
    self._mask_kwargs = dict(mask_token_id=int(mask_token_id), vocab_size=int(vocab_size),
                             special_ids=tuple(int(i) for i in special_ids), mask_prob=mlm_probability,
                             replace_prob=replace, random_prob=random_)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    rows = process_rows(self.batch_size, process_index, process_count)
    chunks = self.chunks[self._order.indices(step)[rows.start:rows.stop]]  # (B/P, L)
    ones = np.ones(chunks.shape[1], np.int32)
    inputs, labels = zip(*(mntp_mask(c, ones, np.random.default_rng([self.seed, _ROWS, step, r]),
                                     **self._mask_kwargs) for c, r in zip(chunks, rows)))
    return {"input_ids": np.stack(inputs), "attention_mask": np.ones_like(chunks),
            "labels": np.stack(labels)}


# ---- SimCSE ----------------------------------------------------------------------------------------


def simcse_texts(texts: Iterable[str], unit: str = "report") -> list[str]:
  """Distinct training texts (by `text_tasks.text_key`, first occurrence kept, blanks dropped):
  whole reports, or every sentence of every section (section tags removed)."""
  if unit not in ("report", "sentence"):
    raise ValueError(f"unit must be 'report' or 'sentence', got {unit!r}")
  units = (texts if unit == "report" else
           (s for t in texts for _, body in reports.split_tagged(t) for s in reports.split_sentences(body)))
  distinct: dict[str, str] = {}
  for t in units:
    key = text_tasks.text_key(t)
    if key and key not in distinct:
      distinct[key] = t.strip()
  return list(distinct.values())


class SimcseBatches:
  """Unsupervised SimCSE batches: B distinct texts (`simcse_texts`), shuffled per epoch.

  `batch(step)`: input_ids, attention_mask, embed_mask int32 (B/P, L), tokenized without an
  instruction (llm2vec: the whole text is pooled) and padded to L (`padded_length` of the global
  batch). The model encodes the same rows twice with different dropout; row i of the two passes is
  the positive pair.
  """

  def __init__(self, texts: Iterable[str], tokenizer: Llm2VecTokenizer, batch_size: int, max_length: int,
               seed: int, *, unit: str = "report", length_multiple: int = 32):
    self.texts = simcse_texts(texts, unit)
    self.tokenizer, self.max_length = fit_tokenizer(tokenizer, max_length), max_length
    self.length_multiple = length_multiple
    self.batch_size, self.seed = batch_size, seed
    self._order = _Epochs(len(self.texts), batch_size, seed, f"distinct {unit}s")
    self.steps_per_epoch = self._order.steps_per_epoch

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    rows = process_rows(self.batch_size, process_index, process_count)
    encoded = self.tokenizer.encode_rows([self.texts[i] for i in self._order.indices(step)], "")
    length = padded_length(encoded, self.max_length, self.length_multiple)
    return self.tokenizer.pad(encoded[rows.start:rows.stop], length)


# ---- Supervised contrastive ------------------------------------------------------------------------


def drop_cut_reports(examples: Sequence[text_tasks.Example], tokenizer: Llm2VecTokenizer, max_length: int,
                     tasks: Sequence[str] = ("impression_to_report",)) -> tuple[list[text_tasks.Example], int]:
  """(examples, number dropped): those of `tasks` whose positive is longer than `max_length`
  tokens are dropped. An impression -> report positive cut short loses its IMPRESSION (it ends the
  report), the one part the query states: kept, the pair would teach matching an impression to
  findings that it does not summarize, and every one of its error negatives would equal it."""
  wanted = [i for i, e in enumerate(examples) if e.task in tasks]
  rows = dataclasses.replace(tokenizer, max_length=max_length + 1).encode_rows([examples[i].positive for i in wanted])
  cut = {i for i, (ids, _) in zip(wanted, rows) if len(ids) > max_length}
  return [e for i, e in enumerate(examples) if i not in cut], len(cut)


class SupervisedBatches:
  """(instructed query, positive, hard negatives) batches, one task per global batch.

  The order is `text_tasks.TaskBatchSampler`'s (per-epoch shuffle within tasks, then of the
  batches; no in-batch duplicate queries and no positive that is another row's positive or
  negative); step s is the s-th batch of its epochs in sequence. Epoch lengths vary with the
  packing, so reaching step s computes every earlier epoch once (as `iterate(s)` would); the
  lengths and the current epoch are cached.

  `batch(step)` (R = B/P rows of this process, n = n_negatives, L = `padded_length` of the global
  batch's queries, positives and negatives together):
    query_{input_ids,attention_mask,embed_mask}     int32 (R, L): "{instruction} !@#$%^&*(){query}",
                                                    the instruction attended to, not pooled
    positive_{input_ids,attention_mask,embed_mask}  int32 (R, L): no instruction
    negative_{input_ids,attention_mask,embed_mask}  int32 (R, n, L): the example's first n negatives;
                                                    one with fewer repeats its last
    negative_valid                                  bool (R, n): False on those repeats and on a
                                                    negative whose L tokens equal a positive's
    task_index                                      int32 (R,): index into `text_tasks.TRAIN_TASKS`
  """

  def __init__(self, examples: Sequence[text_tasks.Example], tokenizer: Llm2VecTokenizer, batch_size: int,
               max_length: int, seed: int, n_negatives: int = 1, length_multiple: int = 32, **sampler_kwargs):
    if n_negatives < 0:
      raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
    unknown = sorted({e.task for e in examples} - set(text_tasks.TRAIN_TASKS))
    if unknown:
      raise ValueError(f"unknown task(s) {unknown}; task_index indexes text_tasks.TRAIN_TASKS")
    if n_negatives and any(not e.negatives for e in examples):
      raise ValueError("an example has no negatives; filter with training_examples(min_negatives=1) "
                       "or use n_negatives=0")
    self.examples, self.n_negatives, self.length_multiple = list(examples), n_negatives, length_multiple
    self.tokenizer, self.max_length = fit_tokenizer(tokenizer, max_length), max_length
    self.batch_size, self.seed = batch_size, seed
    self.sampler = text_tasks.TaskBatchSampler(self.examples, batch_size, seed, **sampler_kwargs)
    self._epoch_lengths: list[int] = []
    self._current: tuple[int, list[np.ndarray]] | None = None

  def _epoch(self, epoch: int) -> list[np.ndarray]:
    if self._current is None or self._current[0] != epoch:
      self._current = (epoch, self.sampler.epoch(epoch))
    return self._current[1]

  def indices(self, step: int) -> np.ndarray:
    """Example indices of global batch `step` (B,)."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, start = 0, 0
    while True:
      if epoch == len(self._epoch_lengths):
        self._epoch_lengths.append(len(self._epoch(epoch)))
        if not self._epoch_lengths[-1]:
          raise ValueError("no complete batch: fewer conflict-free examples per task than batch_size")
      if step < start + self._epoch_lengths[epoch]:
        return self._epoch(epoch)[step - start]
      start += self._epoch_lengths[epoch]
      epoch += 1

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    rows = process_rows(self.batch_size, process_index, process_count)
    everyone = [self.examples[i] for i in self.indices(step)]  # the global batch decides L
    n, encode = self.n_negatives, self.tokenizer.encode_rows
    queries = encode([e.query for e in everyone], [e.instruction for e in everyone])
    positives = encode([e.positive for e in everyone])
    negatives = encode([e.negatives[min(j, len(e.negatives) - 1)] for e in everyone for j in range(n)])
    l = padded_length(queries + positives + negatives, self.max_length, self.length_multiple)
    examples, r = everyone[rows.start:rows.stop], len(rows)
    pad = lambda encoded: self.tokenizer.pad(encoded, l)
    out = {f"query_{k}": v for k, v in pad(queries[rows.start:rows.stop]).items()}
    out.update({f"positive_{k}": v for k, v in pad(positives[rows.start:rows.stop]).items()})
    mine = negatives[rows.start * n:rows.stop * n]
    flat = pad(mine) if mine else {k: np.zeros((0, l), np.int32) for k in ("input_ids", "attention_mask", "embed_mask")}
    out.update({f"negative_{k}": v.reshape(r, n, l) for k, v in flat.items()})
    # A negative that truncation to max_length made identical to a positive of the batch (an error
    # in the last sentence of a long report) is not a negative: it would be a second right answer.
    answers = {tuple(ids) for ids, _ in positives}
    valid = [j < len(e.negatives) and tuple(mine[i * n + j][0]) not in answers
             for i, e in enumerate(examples) for j in range(n)]
    out["negative_valid"] = np.asarray(valid, bool).reshape(r, n)
    out["task_index"] = np.asarray([text_tasks.TRAIN_TASKS.index(e.task) for e in examples], np.int32)
    return out


# ---- Cached training examples ----------------------------------------------------------------------

# Bump when the cache format changes. The builders' own source is part of the key as well, so an
# edit to the lexicon, the variants or the task builder never serves stale examples.
CACHE_VERSION = 1
_BUILDER_MODULES = ("text_tasks", "variants", "shorthand", "reports", "labels", "mining")
_ROW_FIELDS = ("report_tagged", "report", "findings", "impression")  # what training_examples reads


def _canonical(value):
  if isinstance(value, Mapping):
    return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if isinstance(value, (set, frozenset)):
    return sorted(_canonical(v) for v in value)
  if isinstance(value, (list, tuple)):
    return [_canonical(v) for v in value]
  return value


def _builder_source_hash() -> str:
  import importlib
  h = hashlib.blake2b(digest_size=16)
  for name in _BUILDER_MODULES:
    module = importlib.import_module(f"data_pipelines.{name}")
    with open(module.__file__, "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def training_examples_key(rows: Sequence[Mapping], seed: int, **kwargs) -> str:
  """Content hash of what `training_examples(rows, seed, **kwargs)` depends on."""
  h = hashlib.blake2b(digest_size=16)
  h.update(json.dumps({"version": CACHE_VERSION, "builders": _builder_source_hash(), "seed": seed,
                       "kwargs": _canonical(kwargs)}, sort_keys=True).encode())
  for row in rows:
    h.update(json.dumps([row.get(f) or "" for f in _ROW_FIELDS]).encode())
  return h.hexdigest()


def cached_training_examples(rows: Iterable[Mapping], cache_dir, seed: int = 0,
                             **kwargs) -> list[text_tasks.Example]:
  """`text_tasks.training_examples(rows, seed, **kwargs)`, stored once as JSON lines in `cache_dir`.

  The file name is `training_examples_key(...)`: any change in the rows' texts, the seed, the
  kwargs, the builder modules' source or `CACHE_VERSION` builds anew. Written to a temporary file
  and renamed, so a reader never sees a partial cache; concurrent builders write identical files.
  """
  rows = list(rows)
  cache_dir = epath.Path(cache_dir)
  path = cache_dir / f"training_examples-{training_examples_key(rows, seed, **kwargs)}.jsonl"
  if path.exists():
    # json.dumps escapes every newline inside a string, so "\n" only ends records.
    return [_example(json.loads(line)) for line in path.read_text(encoding="utf-8").split("\n") if line]
  examples = text_tasks.training_examples(rows, seed, **kwargs)
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = cache_dir / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
  tmp.write_text("".join(json.dumps(dataclasses.asdict(e), ensure_ascii=False) + "\n" for e in examples),
                 encoding="utf-8")
  tmp.rename(path)
  return examples


def _example(d: dict) -> text_tasks.Example:
  return text_tasks.Example(d["task"], d["instruction"], d["query"], d["positive"], tuple(d["negatives"]),
                            tuple(d["negative_kinds"]))

