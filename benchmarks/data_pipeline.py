"""Images/s of the Grain CLIP pipeline (0 and 2 worker processes) against a plain loop that PIL-decodes
and resizes the same prepared records, in one run: rounds alternate the three, medians are reported.

    python benchmarks/data_pipeline.py                       # synthetic 512 px data, read at 448 px
    python benchmarks/data_pipeline.py --data_dir=/tmp/demo_prepared --image_size=112

Goal (issue 3): Grain >= 0.8x plain with 0 workers, >= 1.5x with 2. Both sides read the same
ArrayRecord shards and parse the same records; Grain's side also batches and, by default, writes
normalized float32 RGB (12x the bytes of the plain loop's output, which stops at one float
channel); the _u8 rows measure `normalize_images=False`, uint8 batches for normalizing on the
device. Worker start-up is timed apart from the steady rate.
"""
from __future__ import annotations

import argparse
import io
import pathlib
import statistics
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from data_pipelines import pipelines, prepare, tfds_dataset


def _synthetic(root: pathlib.Path, n: int, size: int) -> None:
  """n studies with textured images (realistic PNG sizes) as a generic manifest."""
  rng = np.random.default_rng(0)
  lines = []
  y, x = np.mgrid[0:size, 0:size] / size
  lungs = ((x - 0.3) ** 2 / 0.02 + (y - 0.45) ** 2 / 0.08 < 1) | ((x - 0.7) ** 2 / 0.02 + (y - 0.45) ** 2 / 0.08 < 1)
  body = 0.75 - 0.4 * lungs
  (root / "img").mkdir(parents=True)
  for i in range(n):
    pixels = np.clip(body + 0.06 * rng.standard_normal((size, size)), 0, 1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "img" / f"{i}.png", compress_level=1)
    lines.append(f'{{"image": "img/{i}.png", "report": "[IMPRESSION] Study {i}.", "split": "train"}}\n')
  (root / "manifest.jsonl").write_text("".join(lines))


def _plain(data_dir: str, n: int, image_size: int) -> float:
  """Images/s of: read record, parse, PIL decode, PIL resize, to float32."""
  import grain
  source = grain.sources.ArrayRecordDataSource(tfds_dataset.split_files(data_dir, "train"))
  start = time.perf_counter()
  for i in range(n):
    png = tfds_dataset.parse(source[i % len(source)])["images"][0]
    im = Image.open(io.BytesIO(png))
    if im.size != (image_size, image_size):
      im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
    np.asarray(im, np.float32) / 255.0
  return n / (time.perf_counter() - start)


def _grain(data_dir: str, n: int, image_size: int, workers: int, batch_size: int,
           normalize: bool = True) -> tuple[float, float]:
  """(images/s after the first batch, seconds to the first batch)."""
  ds = pipelines.clip_dataset(data_dir, "train", batch_size=batch_size, image_size=image_size, tokenizer=None,
                              max_length=8, seed=0, train=True, augment_images=False, shuffle_p=0.0,
                              worker_count=workers, normalize_images=normalize)
  start = time.perf_counter()
  it = iter(ds)
  next(it)
  first = time.perf_counter() - start
  batches = max(1, n // batch_size)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch_size / (time.perf_counter() - start)
  it.close()
  return rate, first


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", help="a prepared dataset (default: synthesize one)")
  parser.add_argument("--stored_size", type=int, default=512, help="synthetic data: prepared size")
  parser.add_argument("--image_size", type=int, default=448, help="size the pipeline produces")
  parser.add_argument("--studies", type=int, default=400, help="synthetic data: studies")
  parser.add_argument("--images", type=int, default=384, help="images timed per measurement")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir
    if data_dir is None:
      _synthetic(pathlib.Path(tmp) / "src", args.studies, args.stored_size)
      data_dir = str(pathlib.Path(tmp) / "prepared")
      prepare.run(prepare.Options("manifest", data_dir, str(pathlib.Path(tmp) / "src"),
                                  image_size=args.stored_size, workers=2, shard_size=100))
    rates = {"plain": [], "grain_0": [], "grain_2": [], "grain_0_u8": [], "grain_2_u8": []}
    startup = []
    for _ in range(args.rounds):
      rates["plain"].append(_plain(data_dir, args.images, args.image_size))
      rates["grain_0"].append(_grain(data_dir, args.images, args.image_size, 0, args.batch_size)[0])
      rate, first = _grain(data_dir, args.images, args.image_size, 2, args.batch_size)
      rates["grain_2"].append(rate)
      startup.append(first)
      for workers in (0, 2):
        rates[f"grain_{workers}_u8"].append(
            _grain(data_dir, args.images, args.image_size, workers, args.batch_size, normalize=False)[0])
  med = {k: statistics.median(v) for k, v in rates.items()}
  print(f"data: {data_dir if args.data_dir else f'synthetic, {args.studies} studies at {args.stored_size} px'}"
        f" -> {args.image_size} px; {args.images} images x {args.rounds} rounds (medians)")
  for k, v in med.items():
    print(f"  {k:10s} {v:8.1f} images/s   ({', '.join(f'{r:.0f}' for r in rates[k])})")
  print(f"  grain_2 start-up to first batch: {statistics.median(startup):.1f} s (excluded above)")
  print("  (_u8: normalize_images=False, uint8 (B, S, S) batches for normalizing on the device)")
  for suffix in ("", "_u8"):
    print(f"ratio grain_0{suffix} / plain = {med['grain_0' + suffix] / med['plain']:.2f}  (goal >= 0.8)   "
          f"grain_2{suffix} / plain = {med['grain_2' + suffix] / med['plain']:.2f}  (goal >= 1.5)")


if __name__ == "__main__":
  main()
