"""Training-time radiograph augmentation and the final normalization, on prepared uint8 images.

Augmentations stay within what varies between real acquisitions: a small affine (patient position),
brightness / contrast / gamma (exposure and processing), optional CLAHE (local contrast, as some
sites apply). No horizontal flip unless asked: the heart is on the left, and reports say "left" and
"right", so a flipped image contradicts its report.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Ranges are symmetric around the identity; 0 turns a transform off."""
  rotate_deg: float = 5.0         # uniform in [-r, r]
  scale: float = 0.05             # zoom factor uniform in [1 - s, 1 + s]
  translate: float = 0.04         # shift, as a fraction of the side, per axis
  brightness: float = 0.08        # additive offset on [0, 1] intensities
  contrast: float = 0.10          # factor around the image mean, in [1 - c, 1 + c]
  gamma: float = 0.10             # exponent in [1 - g, 1 + g]
  clahe_p: float = 0.0            # probability of CLAHE
  clahe_clip: float = 2.0         # OpenCV's clip limit convention (multiple of the uniform bin)
  clahe_tiles: int = 8            # tiles per side
  hflip_p: float = 0.0            # laterality: keep 0 unless reports are flipped too


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
  """uint8 (H, W) -> uint8 (H, W). Deterministic given `rng`'s state.

  Brightness, contrast (around the image mean) and gamma are all functions of the pixel value
  alone, so they are applied together as one 256-entry lookup table: one pass over the image.
  """
  # Draw every random number up front, in a fixed order, so the stream does not depend on which
  # transforms are enabled.
  u = rng.uniform(-1.0, 1.0, size=9)
  if cfg.clahe_p > 0 and u[6] * 0.5 + 0.5 < cfg.clahe_p:
    img = clahe(img, cfg.clahe_clip, cfg.clahe_tiles)
  img = _affine(img, cfg.rotate_deg * u[0], 1.0 + cfg.scale * u[1],
                cfg.translate * u[2] * img.shape[1], cfg.translate * u[3] * img.shape[0])
  if cfg.hflip_p > 0 and u[7] * 0.5 + 0.5 < cfg.hflip_p:
    img = img[:, ::-1]
  levels = np.arange(256, dtype=np.float64) / 255
  mean = img.mean() / 255
  levels = (levels - mean) * (1.0 + cfg.contrast * u[4]) + mean + cfg.brightness * u[5]
  levels = np.clip(levels, 0.0, 1.0) ** (1.0 + cfg.gamma * u[8])
  return np.rint(levels * 255).astype(np.uint8)[img]


def _affine(img: np.ndarray, deg: float, zoom: float, dx: float, dy: float) -> np.ndarray:
  """Rotation + zoom about the center, then a shift; outside the image is black (as the pad)."""
  if deg == 0 and zoom == 1 and dx == 0 and dy == 0:
    return img
  h, w = img.shape
  cx, cy = (w - 1) / 2, (h - 1) / 2
  t = math.radians(deg)
  # PIL wants the inverse map: output (x, y) -> input (a x + b y + c, d x + e y + f).
  a, b = math.cos(t) / zoom, math.sin(t) / zoom
  d, e = -math.sin(t) / zoom, math.cos(t) / zoom
  ox, oy = cx + dx, cy + dy
  c = cx - a * ox - b * oy
  f = cy - d * ox - e * oy
  out = Image.fromarray(img).transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f),
                                       resample=Image.Resampling.BILINEAR, fillcolor=0)
  return np.asarray(out)


def clahe(img: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
  """Contrast-limited adaptive histogram equalization. uint8 (H, W) -> uint8 (H, W).

  As OpenCV's: per-tile histograms clipped at `clip_limit` x the uniform bin height, the excess
  spread evenly, and each pixel's mapping bilinearly interpolated between the four nearest tiles.
  """
  h, w = img.shape
  th, tw = math.ceil(h / tiles), math.ceil(w / tiles)
  padded = np.pad(img, ((0, th * tiles - h), (0, tw * tiles - w)), mode="reflect")
  blocks = padded.reshape(tiles, th, tiles, tw).transpose(0, 2, 1, 3).reshape(tiles * tiles, -1)
  offsets = (np.arange(tiles * tiles) * 256)[:, None]
  hist = np.bincount((blocks.astype(np.int64) + offsets).ravel(),
                     minlength=tiles * tiles * 256).reshape(tiles * tiles, 256).astype(np.float64)
  limit = max(clip_limit * th * tw / 256, 1.0)
  excess = np.maximum(hist - limit, 0).sum(axis=1, keepdims=True)
  hist = np.minimum(hist, limit) + excess / 256
  lut = np.clip(np.rint(np.cumsum(hist, axis=1) * (255.0 / (th * tw))), 0, 255)
  lut = lut.reshape(tiles, tiles, 256).astype(np.float32)  # (ty, tx, 256)

  def coords(n, step):  # Tile indices left/right of each pixel center and the weight of the right.
    pos = (np.arange(n) + 0.5) / step - 0.5
    lo = np.clip(np.floor(pos), 0, tiles - 1).astype(np.int64)
    hi = np.minimum(lo + 1, tiles - 1)
    return lo, hi, np.clip(pos - lo, 0.0, 1.0).astype(np.float32)

  y0, y1, wy = coords(h, th)
  x0, x1, wx = coords(w, tw)
  y0, y1, wy = y0[:, None], y1[:, None], wy[:, None]
  top = lut[y0, x0, img] * (1 - wx) + lut[y0, x1, img] * wx
  bottom = lut[y1, x0, img] * (1 - wx) + lut[y1, x1, img] * wx
  return np.rint(top * (1 - wy) + bottom * wy).astype(np.uint8)


def normalize(img: np.ndarray, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
  """uint8 (..., H, W) -> float32 (..., H, W, 3): (x / 255 - mean) / std, gray copied to 3 channels.

  A table lookup writes the output in one pass; the output is 12x the input's bytes, so this is
  the step whose memory traffic matters.
  """
  table = (np.arange(256, dtype=np.float32) / 255 - np.float32(mean)) / np.float32(std)
  return np.take(np.repeat(table[:, None], 3, axis=1), img, axis=0)
