"""Semi-synthetic chest radiographs drawn from a report's findings, for the embedded demo set.

Every image starts from the one real radiograph we have offline (pydicom-data's RG1_UNCR.dcm, a PA
chest CR), windowed and resized once per output size. Findings are drawn on it in a density image
(bright = dense, as displayed), in a coordinate frame fitted to each lung of that radiograph, so an
effusion sits in the costophrenic angle and a pneumothorax along the apex of the side the report
names. Laterality follows the radiological convention: the patient's left is on the image right.
Severity changes size and density; position, size and density also vary per study. The study then
gets its own affine jitter, exposure, blur and noise, drawn from a stream separate from the findings'
streams, so a report with and without a finding renders to the same base image.

All drawing is vectorized numpy on (size, size) arrays; one 256-px image takes a few milliseconds.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFilter

from data_pipelines import assets
from data_pipelines import labels as labels_lib

# ---- Anatomy of RG1_UNCR.dcm, in units of the image width/height (x to the image right) ----------

# Per lung: apex height, and as functions of t (0 apex .. 1 base) the lateral and medial borders;
# the diaphragm height as a function of x. "right" is the patient's right lung, on the image left.
_LUNGS = {
    "right": dict(top=0.085, t=(0.0, 0.1, 0.25, 0.45, 0.7, 1.0),
                  lateral=(0.235, 0.165, 0.135, 0.115, 0.10, 0.09), medial=(0.33, 0.365, 0.385, 0.39, 0.385, 0.375),
                  dome_x=(0.09, 0.15, 0.25, 0.33, 0.38), dome_y=(0.765, 0.725, 0.695, 0.70, 0.72)),
    "left": dict(top=0.085, t=(0.0, 0.1, 0.25, 0.45, 0.6, 0.75, 0.9, 1.0),
                 lateral=(0.70, 0.78, 0.835, 0.87, 0.885, 0.895, 0.90, 0.905),
                 medial=(0.61, 0.585, 0.575, 0.58, 0.62, 0.69, 0.75, 0.79),
                 dome_x=(0.60, 0.70, 0.80, 0.91), dome_y=(0.77, 0.76, 0.765, 0.785)),
}
_HEART = dict(cx=0.575, cy=0.635, a=0.19, b=0.115)  # cardiac silhouette as an ellipse
_HILUM = {"right": (0.34, 0.42), "left": (0.62, 0.42)}
_ZONE_T = {"upper": (0.15, 0.32), "middle": (0.38, 0.55), "lower": (0.62, 0.84)}
_GRADE = {"small": 0, "mild": 0, "moderate": 1, "large": 2, "severe": 2}


@functools.lru_cache(maxsize=1)
def _base_full(path: str) -> np.ndarray:
  """The radiograph as float32 density in [0, 1] (bright = dense), full resolution."""
  ds = pydicom.dcmread(path)
  raw = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
  # The stored window (15000/30000) spans the whole 15-bit range and leaves the film flat; window on
  # the body's own range instead, from percentiles of the central region (not the collimator edge).
  h, w = raw.shape
  lo, hi = np.percentile(raw[h // 10:-h // 10, w // 10:-w // 10], (0.5, 99.5))
  img = (raw - lo) / (hi - lo)
  if ds.PhotometricInterpretation == "MONOCHROME1":  # high values are dark on MONOCHROME1
    img = 1.0 - img
  # Scaled to 0.88 at the densest tissue, leaving headroom so metal (drawn at 1.0) stays visible.
  return 0.88 * np.clip(img, 0.0, 1.0) ** 1.15


def _radiograph_path() -> str:
  return str(assets.path("radiograph") / "RG1_UNCR.dcm")


@dataclasses.dataclass(frozen=True)
class _Frame:
  """Coordinate grids at one output size: x, y in image units and per-lung (s, t) coordinates,
  s from the lateral (0) to the medial (1) border, t from the apex (0) to the diaphragm (1)."""
  size: int
  base: np.ndarray
  x: np.ndarray
  y: np.ndarray
  s: dict
  t: dict
  lung: dict  # soft lung masks
  width: dict  # lung width (image units) at each pixel's t
  hemithorax: dict  # (row slice, column slice) holding each lung with a margin

  def roi(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
    return _roi(self.size, x0, y0, x1, y1)


def _roi(n: int, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
  """Pixel slices of a box in image units (drawing only there keeps a render to milliseconds)."""
  return (slice(max(0, int(y0 * n)), min(n, int(np.ceil(y1 * n)) + 1)),
          slice(max(0, int(x0 * n)), min(n, int(np.ceil(x1 * n)) + 1)))


@functools.lru_cache(maxsize=4)
def frame(size: int) -> _Frame:
  """The base radiograph and coordinate grids at one output size (cached: built once per size)."""
  base = np.asarray(Image.fromarray(_base_full(_radiograph_path())).resize((size, size), Image.Resampling.BILINEAR))
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  x, y = (x + 0.5) / size, (y + 0.5) / size
  s, t, lung, width, hemithorax = {}, {}, {}, {}, {}
  for side, g in _LUNGS.items():
    dome = np.interp(x, g["dome_x"], g["dome_y"]).astype(np.float32)
    tt = (y - g["top"]) / (dome - g["top"])
    tc = np.clip(tt, 0, 1)
    lateral = np.interp(tc, g["t"], g["lateral"]).astype(np.float32)
    medial = np.interp(tc, g["t"], g["medial"]).astype(np.float32)
    s[side], t[side], width[side] = (x - lateral) / (medial - lateral), tt, np.abs(medial - lateral)
    lung[side] = _box(s[side], 0, 1, 0.04) * _box(tt, 0, 1, 0.02)
    xs = g["lateral"] + g["medial"]
    hemithorax[side] = _roi(size, min(xs) - 0.05, g["top"] - 0.03, max(xs) + 0.05, max(g["dome_y"]) + 0.08)
  return _Frame(size, base.astype(np.float32), x, y, s, t, lung, width, hemithorax)


# ---- Drawing primitives --------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 + 0.5 * np.tanh(0.5 * z)


def _box(v: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
  return _sigmoid((v - lo) / soft) * _sigmoid((hi - v) / soft)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
  """Zero-mean, unit-scale noise, smooth over about `cell` pixels (an upsampled coarse grid)."""
  coarse = rng.standard_normal((max(2, shape[0] // cell + 2), max(2, shape[1] // cell + 2))).astype(np.float32)
  return np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.Resampling.BICUBIC))


def _blend(img: np.ndarray, weight: np.ndarray, level: float | np.ndarray) -> None:
  """Moves `img` toward `level` by `weight` in [0, 1] (in place; `img` may be a view)."""
  img += weight * (level - img)


def _point(side: str, s: float, t: float) -> tuple[float, float]:
  """Image coordinates of lung coordinates (s, t) on `side`."""
  g = _LUNGS[side]
  lateral, medial = np.interp(t, g["t"], g["lateral"]), np.interp(t, g["t"], g["medial"])
  x = lateral + s * (medial - lateral)
  dome = np.interp(x, g["dome_x"], g["dome_y"])
  return float(x), float(g["top"] + t * (dome - g["top"]))


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float,
             angle: float = 0.0) -> np.ndarray:
  """Normalized radius field: 1 on the ellipse's border."""
  c, s = np.cos(angle), np.sin(angle)
  dx, dy = x - cx, y - cy
  return np.sqrt(((c * dx + s * dy) / rx) ** 2 + ((-s * dx + c * dy) / ry) ** 2)


def _blob(img: np.ndarray, f: _Frame, ellipse: tuple, edge: float, level: float, strength: float,
          mask: np.ndarray | None = None, rng: np.random.Generator | None = None, patchy: float = 0.0) -> None:
  """A soft ellipse (cx, cy, rx, ry, angle) moved toward `level`, drawn in its bounding box only;
  `patchy` > 0 roughens its border and density with smooth noise from `rng`."""
  cx, cy, rx, ry, angle = ellipse
  r = max(rx, ry) * (1.6 + patchy)
  sl = f.roi(cx - r, cy - r, cx + r, cy + r)
  field = _ellipse(f.x[sl], f.y[sl], cx, cy, rx, ry, angle)
  if patchy > 0:
    field = field - patchy * _smooth_noise(rng, field.shape, max(2, f.size // 24))
  weight = _sigmoid((1.0 - field) / edge) * strength
  if mask is not None:
    weight = weight * mask[sl]
  _blend(img[sl], weight, level)


def _lines(size: int, paths: list[list[tuple[float, float]]], width: float, soft: float = 0.0) -> np.ndarray:
  """Polylines in image units rasterized to a float mask (supersampled, so thin lines stay smooth);
  `soft` > 0 blurs the edges by that many image units (a vessel rather than a wire)."""
  scale = 4 if size < 192 else 2
  canvas = Image.new("L", (size * scale, size * scale), 0)
  draw = ImageDraw.Draw(canvas)
  px = max(1, int(round(width * size * scale)))
  for path in paths:
    draw.line([(x * size * scale, y * size * scale) for x, y in path], fill=255, width=px, joint="curve")
  canvas = canvas.resize((size, size), Image.Resampling.BOX)
  if soft > 0:
    canvas = canvas.filter(ImageFilter.GaussianBlur(soft * size))
  return np.asarray(canvas, np.float32) / 255.0


def _curve(points: list[tuple[float, float]], n: int = 16) -> list[tuple[float, float]]:
  """A smooth curve through control points (Catmull-Rom)."""
  p = np.array([points[0]] + points + [points[-1]], np.float64)
  u = np.linspace(0, 1, n, endpoint=False)[:, None]
  out = []
  for i in range(1, len(p) - 2):
    a, b, c, d = p[i - 1], p[i], p[i + 1], p[i + 2]
    out += [tuple(q) for q in 0.5 * (2 * b + (c - a) * u + (2 * a - 5 * b + 4 * c - d) * u ** 2
                                     + (3 * b - a - 3 * c + d) * u ** 3)]
  return out + [tuple(p[-2])]


# ---- Findings ------------------------------------------------------------------------------------


def _sides(fs: labels_lib.Findings, name: str, rng: np.random.Generator) -> list[str]:
  side = fs.laterality.get(name)
  if side == "bilateral":
    return ["right", "left"]
  return [side] if side in ("left", "right") else [("right", "left")[int(rng.integers(2))]]


def _zone_t(fs: labels_lib.Findings, name: str, rng: np.random.Generator, default: str | None = None) -> float:
  zone = fs.zone.get(name) or default or ("lower", "middle", "upper")[int(rng.choice(3, p=(0.5, 0.3, 0.2)))]
  return float(rng.uniform(*_ZONE_T[zone]))


def _grade(fs: labels_lib.Findings, name: str) -> int:
  """0 small/mild, 1 moderate or unstated, 2 large/severe."""
  return _GRADE.get(fs.severity.get(name, ""), 1)


def _wall_depth(f: _Frame, side: str, sl) -> np.ndarray:
  """Distance (image units) from the lateral and apical chest wall, inside one lung."""
  return np.minimum(np.clip(f.s[side][sl], 0, None) * f.width[side][sl], np.clip(f.t[side][sl], 0, None) * 0.65)


def _effusion(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Basal opacity on the stated side, with a meniscus climbing the lateral wall; grade sets its height."""
  grade = _grade(fs, "Pleural Effusion")
  for side in _sides(fs, "Pleural Effusion", rng):
    sl = f.hemithorax[side]
    s, t = f.s[side][sl], f.t[side][sl]
    height = rng.uniform(*((0.08, 0.14), (0.22, 0.32), (0.42, 0.58))[grade])
    meniscus = height * rng.uniform(0.5, 0.9) + 0.03  # fluid climbs the lateral chest wall
    top = 1.0 - height - meniscus * np.clip(1.0 - s, 0, 1) ** 2
    weight = _sigmoid((t - top) / 0.025) * _box(s, -0.1, 1.05, 0.03) * _box(t, 0, 1.15, 0.02)
    _blend(img[sl], weight * rng.uniform(0.85, 0.95), 0.8 + 0.1 * np.clip((t - top) * 3, 0, 1))


def _pneumothorax(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Apical-lateral air without lung markings, bounded by a thin pleural line; grade sets its width."""
  grade = _grade(fs, "Pneumothorax")
  for side in _sides(fs, "Pneumothorax", rng):
    sl = f.hemithorax[side]
    lung, t = f.lung[side][sl], f.t[side][sl]
    gap = rng.uniform(*((0.035, 0.05), (0.06, 0.085), (0.1, 0.14))[grade])  # pleural line to chest wall
    extent = rng.uniform(*((0.4, 0.55), (0.55, 0.75), (0.8, 0.95))[grade])  # how far down it reaches
    depth = _wall_depth(f, side, sl)
    edge = gap * np.sqrt(np.clip((extent - t) / extent, 0, 1))
    _blend(img[sl], lung * _sigmoid((edge - depth) / 0.004) * 0.95, rng.uniform(0.03, 0.08))  # air, no markings
    img[sl] += lung * np.exp(-((depth - edge) / 0.004) ** 2) * (edge > 0.005) * rng.uniform(0.3, 0.4)  # pleural line


def _airspace(name: str, density: tuple, patchy: float, radius: tuple):
  """Consolidation, pneumonia and generic lung opacity: a patchy blob in a lung zone."""
  def draw(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
    grade = _grade(fs, name)
    for side in _sides(fs, name, rng):
      cx, cy = _point(side, rng.uniform(0.25, 0.7), _zone_t(fs, name, rng))
      r = rng.uniform(*radius) * (0.8, 1.0, 1.3)[grade]
      ellipse = (cx, cy, r * rng.uniform(0.85, 1.2), r * rng.uniform(0.75, 1.05), rng.uniform(-0.6, 0.6))
      _blob(img, f, ellipse, 0.12, 0.88, rng.uniform(*density) * (0.85, 1.0, 1.1)[grade], f.lung[side], rng, patchy)
  return draw


def _edema(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Bilateral perihilar haze (batwing), wider and denser with grade."""
  grade = _grade(fs, "Edema")
  spread = rng.uniform(0.11, 0.14) * (0.85, 1.0, 1.25)[grade]
  strength = rng.uniform(0.7, 0.8) * (0.85, 1.0, 1.15)[grade]
  for side, (hx, hy) in _HILUM.items():
    sl = f.hemithorax[side]
    haze = np.exp(-(((f.x[sl] - hx) / (spread * 1.1)) ** 2 + ((f.y[sl] - hy - 0.04) / (spread * 1.7)) ** 2))
    texture = 0.8 + 0.2 * _smooth_noise(rng, haze.shape, max(2, f.size // 40))
    _blend(img[sl], np.minimum(haze * f.lung[side][sl] * texture * strength, 1.0), 0.85)


def _cardiomegaly(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """A cardiac silhouette widened mostly to the patient's left; grade sets how much."""
  grow = rng.uniform(*((0.035, 0.05), (0.05, 0.07), (0.07, 0.095))[_grade(fs, "Cardiomegaly")])
  h = _HEART
  ellipse = (h["cx"] + 0.45 * grow, h["cy"] + 0.25 * grow, h["a"] + grow, h["b"] + 0.5 * grow, 0.0)
  _blob(img, f, ellipse, 0.05, 0.84, rng.uniform(0.85, 0.95), f.y < 0.78)


def _mediastinum(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """A widened upper mediastinum."""
  ellipse = (0.5 + rng.uniform(-0.01, 0.02), 0.3, rng.uniform(0.1, 0.13), 0.2, 0.0)
  _blob(img, f, ellipse, 0.06, 0.84, rng.uniform(0.85, 0.95))


def _lesion(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Masses, nodules and calcified granulomas: round opacities of decreasing size and rising density."""
  for name, count, radius, density in (("Mass", (1, 1), (0.045, 0.07), (0.8, 0.9)),
                                       ("Nodule", (1, 2), (0.02, 0.03), (0.8, 0.9)),
                                       ("Granuloma", (1, 3), (0.01, 0.015), (0.95, 1.0))):
    if not fs.positive(name):
      continue
    for side in _sides(fs, name, rng):
      for _ in range(int(rng.integers(count[0], count[1] + 1))):
        cx, cy = _point(side, rng.uniform(0.2, 0.75), _zone_t(fs, name, rng))
        r = rng.uniform(*radius)
        _blob(img, f, (cx, cy, r, r * rng.uniform(0.85, 1.1), 0.0), 0.08, 0.95, rng.uniform(*density))


def _atelectasis(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """A thin band-like (plate) opacity, basal unless a zone is stated."""
  for side in _sides(fs, "Atelectasis", rng):
    cx, cy = _point(side, rng.uniform(0.3, 0.65), _zone_t(fs, "Atelectasis", rng, default="lower"))
    ellipse = (cx, cy, rng.uniform(0.055, 0.085), rng.uniform(0.009, 0.014), rng.uniform(-0.35, 0.35))
    _blob(img, f, ellipse, 0.15, 0.9, rng.uniform(0.8, 0.9), f.lung[side])


def _pleural_other(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Pleural thickening: a dense band along the lateral wall, or an apical cap."""
  for side in _sides(fs, "Pleural Other", rng):
    sl = f.hemithorax[side]
    t, depth = f.t[side][sl], _wall_depth(f, side, sl)
    span = _box(t, -0.1, 0.22, 0.03) if fs.zone.get("Pleural Other") == "upper" else _box(t, 0.25, 0.9, 0.05)
    thickness = rng.uniform(0.025, 0.035)
    _blend(img[sl], f.lung[side][sl] * span * _sigmoid((thickness - depth) / 0.005) * 0.9, 0.88)


def _fracture(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """A healing rib fracture at the lateral chest wall: callus crossed by a lucent line."""
  for side in _sides(fs, "Fracture", rng):
    cx, cy = _point(side, rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.65))
    angle = rng.uniform(-0.5, -0.2) * (1 if side == "right" else -1)
    _blob(img, f, (cx, cy, 0.026, 0.013, angle), 0.12, 0.95, 0.9)  # callus
    _blob(img, f, (cx, cy, 0.004, 0.02, angle), 0.2, 0.2, 0.7)  # fracture line


def _devices(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Metal: pacemaker with leads, central line or PICC, endotracheal and enteric tubes, chest tube,
  sternotomy wires, and a valve ring for other devices."""
  paths, width = [], 0.01
  j = lambda: rng.uniform(-0.015, 0.015)
  if fs.positive("Pacemaker"):
    side = fs.laterality.get("Pacemaker", "left" if rng.random() < 0.85 else "right")
    gx, gy = (0.76 + j(), 0.17 + j()) if side != "right" else (0.24 + j(), 0.17 + j())
    sl = f.roi(gx - 0.05, gy - 0.05, gx + 0.05, gy + 0.05)
    box = _box(f.x[sl], gx - 0.04, gx + 0.04, 0.004) * _box(f.y[sl], gy - 0.03, gy + 0.03, 0.004)
    np.maximum(img[sl], box, out=img[sl])
    for tip in ((0.45 + j(), 0.55 + j()), (0.55 + j(), 0.70 + j()))[:int(rng.integers(1, 3))]:
      paths.append(_curve([(gx, gy), ((gx + 0.5) / 2, 0.2 + j()), (0.46 + j(), 0.32), tip]))
  if fs.positive("Central Line"):
    tip = (0.465 + j(), 0.38 + j())
    if fs.laterality.get("Central Line") == "left":
      paths.append(_curve([(0.62 + j(), 0.0), (0.58, 0.18), (0.5, 0.27), tip]))
    elif rng.random() < 0.3:  # PICC from the arm
      paths.append(_curve([(0.0, 0.24 + j()), (0.2, 0.19), (0.38, 0.2), (0.45, 0.29), tip]))
    else:
      paths.append(_curve([(0.40 + j(), 0.0), (0.42, 0.15), (0.455, 0.27), tip]))
  if fs.positive("Endotracheal Tube"):
    x, tip = 0.5 + j() / 3, rng.uniform(0.2, 0.27)
    sl = f.roi(x - 0.03, 0.0, x + 0.03, tip)
    tube = _box(f.x[sl], x - 0.012, x + 0.012, 0.003) * _box(f.y[sl], -1.0, tip, 0.004)
    _blend(img[sl], tube * 0.6, 1.0)  # the tube's wall, fainter than its radiopaque stripe
    paths.append([(x, 0.0), (x, tip)])
  if fs.positive("Enteric Tube"):
    paths.append(_curve([(0.505, 0.0), (0.51, 0.3), (0.52 + j(), 0.6), (0.56, 0.8), (0.64 + j(), 0.86 + j())]))
  if fs.positive("Chest Tube"):
    side = fs.laterality.get("Chest Tube", "right")
    paths.append(_curve([_point(side, 0.0, 0.75), _point(side, 0.1, 0.45), _point(side, 0.3 + j(), 0.12)]))
  if fs.positive("Sternotomy Wires"):
    for k in range(int(rng.integers(5, 8))):
      cx, cy = 0.5 + j() / 3, 0.26 + k * rng.uniform(0.045, 0.055)
      sl = f.roi(cx - 0.03, cy - 0.02, cx + 0.03, cy + 0.02)
      wire = np.exp(-((_ellipse(f.x[sl], f.y[sl], cx, cy, 0.018, 0.011) - 1.0) / 0.3) ** 2)
      np.maximum(img[sl], wire, out=img[sl])
  if fs.positive("Other Device"):
    cx, cy = 0.52 + j(), 0.58 + j()
    sl = f.roi(cx - 0.04, cy - 0.04, cx + 0.04, cy + 0.04)
    ring = np.exp(-((_ellipse(f.x[sl], f.y[sl], cx, cy, 0.03, 0.021, rng.uniform(0, 3)) - 1.0) / 0.2) ** 2)
    np.maximum(img[sl], ring, out=img[sl])
  if paths:
    np.maximum(img, _lines(f.size, paths, width), out=img)


def _aorta(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Tortuous, unfolded or calcified aorta: a wider knob and descending aorta with a calcified rim."""
  bulge = rng.uniform(0.02, 0.045)
  cx, cy, r = 0.575 + 0.5 * bulge, 0.24, 0.04 + 0.5 * bulge
  _blob(img, f, (cx, cy, r, 0.035, 0.0), 0.15, 0.82, 0.7)
  descending = _curve([(cx - 0.01, cy), (0.57 + bulge, 0.4), (0.555 + 0.5 * bulge, 0.55), (0.54, 0.66)])
  rim = [(cx + r * np.cos(a), cy + 0.035 * np.sin(a)) for a in np.linspace(-1.8, 0.6, 12)]
  _blend(img, _lines(f.size, [descending], 0.04, soft=0.012) * 0.55, 0.82)
  np.maximum(img, _lines(f.size, [rim], 0.006) * 0.97, out=img)


def _spine(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """Degenerative spine: osteophytes, small bright spurs at the vertebral margins."""
  for _ in range(int(rng.integers(3, 7))):
    side = 1 if rng.random() < 0.5 else -1
    ellipse = (0.5 + side * rng.uniform(0.04, 0.05), rng.uniform(0.3, 0.7), 0.015, 0.006, side * rng.uniform(0.2, 0.5))
    _blob(img, f, ellipse, 0.1, 0.97, 0.9)


def _elevated_diaphragm(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """A dome raised into the lung: convex up and sharp, unlike an effusion's concave meniscus."""
  for side in _sides(fs, "Elevated Diaphragm", rng):
    sl = f.hemithorax[side]
    s, t = f.s[side][sl], f.t[side][sl]
    top = 1.0 - rng.uniform(0.15, 0.25) * np.sqrt(np.clip(1.0 - ((s - 0.55) / 0.65) ** 2, 0, 1))
    _blend(img[sl], _sigmoid((t - top) / 0.012) * _box(s, -0.1, 1.05, 0.03) * _box(t, 0, 1.15, 0.02) * 0.95, 0.86)


def _hiatal_hernia(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """A retrocardiac round opacity holding an air-fluid level."""
  cx, cy, r = 0.53 + rng.uniform(-0.02, 0.02), 0.6 + rng.uniform(-0.02, 0.02), rng.uniform(0.04, 0.06)
  _blob(img, f, (cx, cy, r, 0.85 * r, 0.0), 0.06, 0.88, 0.5)
  sl = f.roi(cx - r, cy - r, cx + r, cy)
  bubble = _sigmoid((1.0 - _ellipse(f.x[sl], f.y[sl], cx, cy, 0.85 * r, 0.75 * r)) / 0.08)
  _blend(img[sl], bubble * _sigmoid((cy - f.y[sl]) / 0.004) * 0.8, 0.3)  # gas above the fluid level


def _hyperinflation(img: np.ndarray, f: _Frame, rng: np.random.Generator, fs: labels_lib.Findings) -> None:
  """More lucent lungs; the long lungs and low, flat diaphragms come from a vertical stretch in `_acquire`."""
  for side in _LUNGS:
    sl = f.hemithorax[side]
    _blend(img[sl], f.lung[side][sl] * rng.uniform(0.15, 0.25), 0.05)


# Drawing order: soft tissue and fluid first, metal last (it shows through everything). A finding's
# random stream is seeded by its index here, so keep the order stable.
_DRAW = (
    ("Hyperinflation", _hyperinflation),
    ("Cardiomegaly", _cardiomegaly), ("Enlarged Cardiomediastinum", _mediastinum), ("Aortic Changes", _aorta),
    ("Hiatal Hernia", _hiatal_hernia), ("Elevated Diaphragm", _elevated_diaphragm), ("Spine Degeneration", _spine),
    ("Edema", _edema),
    ("Lung Opacity", _airspace("Lung Opacity", (0.5, 0.65), 0.5, (0.05, 0.08))),
    ("Consolidation", _airspace("Consolidation", (0.7, 0.85), 0.25, (0.06, 0.09))),
    ("Pneumonia", _airspace("Pneumonia", (0.6, 0.75), 0.45, (0.06, 0.09))),
    ("Atelectasis", _atelectasis), ("Lung Lesion", _lesion), ("Granuloma", _lesion),
    ("Pleural Effusion", _effusion), ("Pneumothorax", _pneumothorax), ("Pleural Other", _pleural_other),
    ("Fracture", _fracture), ("Support Devices", _devices),
)


DRAWABLE = tuple(name for name, _ in _DRAW)


def drawn(fs: labels_lib.Findings) -> list[str]:
  """Names of what `render_findings` draws for these findings (positives only), in drawing order."""
  names = [name for name, _ in _DRAW if fs.positive(name)]
  if "Lung Lesion" in names and "Granuloma" in names:
    names.remove("Granuloma")  # one pass draws both
  return names


def render_findings(fs: labels_lib.Findings, seed: int, size: int = 256) -> np.ndarray:
  """uint8 (size, size): the base radiograph, the positive findings of `fs`, then the study's jitter."""
  f = frame(size)
  img = f.base.copy()
  names = drawn(fs)
  for index, (name, draw) in enumerate(_DRAW):
    if name in names:
      draw(img, f, np.random.default_rng([seed, 1 + index]), fs)
  return _acquire(np.clip(img, 0, 1), np.random.default_rng([seed, 0]), "Hyperinflation" in names)


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
  """A few fixed unit-normal fields; a study takes one, shifted at random (cheaper than drawing anew)."""
  return np.random.default_rng(0).standard_normal((4, size, size), dtype=np.float32)


def _acquire(img: np.ndarray, rng: np.random.Generator, hyperinflated: bool) -> np.ndarray:
  """Per-study variation of exposure and positioning: window and gamma, affine jitter, blur, noise."""
  size = img.shape[0]
  # Exposure as a lookup table on 4096 levels: the same curve as applying it per pixel, far cheaper.
  contrast, brightness, gamma = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06), rng.uniform(0.8, 1.25)
  levels = np.linspace(0.0, 1.0, 4096)
  lut = (np.clip((levels - 0.5) * contrast + 0.5 + brightness, 0, 1) ** gamma * 255 + 0.5).astype(np.uint8)
  out = Image.fromarray(lut[(img * 4095 + 0.5).astype(np.int32)])
  angle = np.deg2rad(rng.uniform(-3.0, 3.0))
  scale = rng.uniform(0.94, 1.06)
  stretch = rng.uniform(1.08, 1.13) if hyperinflated else 1.0  # long lungs, low flat diaphragms
  shift = rng.uniform(-0.03, 0.03, size=2) * size
  # PIL's affine maps output pixels to input pixels: the inverse of rotate-scale-stretch about the
  # top centre (so a stretch pushes the diaphragms down, not the apices up).
  c, s = np.cos(angle), np.sin(angle)
  inv = np.array([[c / scale, s / (scale * stretch)], [-s / scale, c / (scale * stretch)]])
  anchor = np.array([size / 2, size * 0.08])
  offset = anchor - inv @ (anchor + shift)
  out = out.transform((size, size), Image.Transform.AFFINE,
                      (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1]),
                      resample=Image.Resampling.BILINEAR, fillcolor=0)
  blur = rng.uniform(0.0, 1.0) * size / 256
  if blur > 0.2:
    out = out.filter(ImageFilter.GaussianBlur(blur))
  noise = np.roll(_noise_bank(size)[int(rng.integers(4))], tuple(rng.integers(size, size=2)), axis=(0, 1))
  return np.clip(np.asarray(out, np.float32) + noise * rng.uniform(2.0, 7.0), 0, 255).astype(np.uint8)
