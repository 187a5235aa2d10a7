"""The embedded demo set: the real IU X-ray (Open-i) reports, each with a radiograph drawn from it.

No real image-report pairs exist offline, so every report from the asset cache is paired with a
semi-synthetic radiograph (`demo_render`) showing the findings the report states, on the side and
at the grade it states; normal reports get normal images. Everything is deterministic per report id:
the split (80/10/10 by a hash of the patient id) and the image (seeded by a hash of the study id).

The reports are CC BY-NC-ND 4.0: they are read from the cache at run time, never copied.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import pathlib
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipelines import assets
from data_pipelines import demo_render
from data_pipelines import labels
from data_pipelines import reports

SPLITS = ("train", "validation", "test")
_SPLIT_PERCENT = (80, 10, 10)


@dataclasses.dataclass(frozen=True)
class DemoStudy:
  """One IU report and the seed of its image.

  IU X-ray has no patient ids, so `patient_id` is the study id: the split is patient-level only in
  the sense that each report is its own patient.
  """
  study_id: str  # the XML's uId, e.g. "CXR1"
  patient_id: str
  split: str  # "train", "validation" or "test"
  report: reports.Report
  image_seed: int


def _hash(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_of(patient_id: str) -> str:
  """80/10/10 train/validation/test by a hash of the patient id (stable across runs and machines)."""
  bucket = _hash("split:" + patient_id) % 100
  return SPLITS[0] if bucket < _SPLIT_PERCENT[0] else SPLITS[1] if bucket < sum(_SPLIT_PERCENT[:2]) else SPLITS[2]


def image_seed(study_id: str) -> int:
  return _hash("image:" + study_id) >> 1  # < 2**63


def demo_studies(iu_dir: pathlib.Path | None = None, skipped: list[tuple[str, str]] | None = None) -> list[DemoStudy]:
  """Every IU report with findings or impression text, sorted by study id.

  Args:
    iu_dir: a folder holding `ecgen-radiology/*.xml` (or the XML files themselves); default: the
      cached `iu_reports` asset.
    skipped: if given, receives (file name, reason) for every file left out (unreadable, malformed,
      empty report, duplicate uId).
  """
  iu_dir = pathlib.Path(iu_dir) if iu_dir is not None else assets.path("iu_reports")
  xml_dir = iu_dir / "ecgen-radiology" if (iu_dir / "ecgen-radiology").is_dir() else iu_dir
  files = sorted(xml_dir.glob("*.xml"))
  if not files:
    raise FileNotFoundError(f"no IU report XML files in {xml_dir}")
  skipped = [] if skipped is None else skipped
  studies: dict[str, DemoStudy] = {}
  for path in files:
    try:
      report, meta = reports.parse_iu_xml(path.read_bytes())
    except (OSError, ValueError) as e:
      skipped.append((path.name, str(e)))
      continue
    uid = meta["uid"]
    if report.is_empty():
      skipped.append((path.name, "empty report: no FINDINGS or IMPRESSION text"))
    elif uid in studies:
      skipped.append((path.name, f"duplicate uId {uid}"))
    else:
      studies[uid] = DemoStudy(uid, uid, split_of(uid), report, image_seed(uid))
  logging.info("demo: %d IU reports kept, %d skipped", len(studies), len(skipped))
  return [studies[k] for k in sorted(studies)]


def findings(study: DemoStudy) -> labels.Findings:
  return _findings(study.report.text())


@functools.lru_cache(maxsize=8192)
def _findings(text: str) -> labels.Findings:
  # Cached: the contact sheet and the renderer both label every report.
  return labels.extract(text)


def render(study: DemoStudy, size: int = 256) -> np.ndarray:
  """uint8 (size, size) grayscale radiograph showing the study's positive findings."""
  return demo_render.render_findings(findings(study), study.image_seed, size)


# ---- Contact sheet -------------------------------------------------------------------------------


def _pick(studies: Sequence[DemoStudy], n: int) -> list[DemoStudy]:
  """Up to n studies: one showing each drawable finding first (so a person sees them all), then
  the rest in order."""
  drawn = [(s, demo_render.drawn(findings(s))) for s in studies]
  chosen: list[DemoStudy] = []
  for name in demo_render.DRAWABLE:
    hit = next((s for s, d in drawn if name in d and s not in chosen), None)
    if hit is not None and len(chosen) < n:
      chosen.append(hit)
  chosen += [s for s in studies if s not in chosen][:n - len(chosen)]
  return chosen


def _font(px: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=px)
  except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def write_contact_sheet(studies: Sequence[DemoStudy], path, size: int = 160, n: int = 24) -> None:
  """A PNG grid of rendered studies, each captioned with its id, what was drawn and its impression."""
  chosen = _pick(studies, n)
  if not chosen:
    raise ValueError("no studies to put on a contact sheet")
  cols = min(6, len(chosen))
  rows = -(-len(chosen) // cols)
  font_px = max(9, size // 14)
  font = _font(font_px)
  caption_h = font_px * 9
  sheet = Image.new("RGB", (cols * size, rows * (size + caption_h)), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  chars = max(12, int(size / (font_px * 0.55)))
  for i, study in enumerate(chosen):
    x, y = (i % cols) * size, (i // cols) * (size + caption_h)
    sheet.paste(Image.fromarray(render(study, size)).convert("RGB"), (x, y))
    fs = findings(study)
    shown = [name + "".join(f" {d[name]}" for d in (fs.laterality, fs.severity) if name in d)
             for name in demo_render.drawn(fs)]
    lines = [f"{study.study_id} ({study.split})"]
    lines += textwrap.wrap("drawn: " + (", ".join(shown) if shown else "nothing (normal)"), chars)[:2]
    lines += textwrap.wrap(study.report.impression or study.report.findings, chars)
    for k, line in enumerate(lines[:8]):
      draw.text((x + 3, y + size + 2 + k * (font_px + 1)), line, fill=(0, 0, 0) if k != 1 else (150, 0, 0), font=font)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  sheet.save(path)
