"""Radiograph decoding: JPEG, PNG (8/16-bit) and DICOM to one grayscale float image, then resizing.

Every decoder returns float32 (H, W) in [0, 1], 1 = bright (bone white), whatever the source:
8-bit images are divided by 255 (their windowing is already baked in); deeper ones (16-bit PNG,
DICOM) are windowed from the range their pixels actually use — never from the nominal bit depth,
which would leave a 12-bit image in a 16-bit PNG almost black, and never clipped at percentiles,
which would throw away real pixel values. DICOM goes through the modality LUT (rescale
slope/intercept), then the VOI LUT or window it declares; MONOCHROME1 is inverted.

Anything that cannot honestly become an image raises `ImageError` with a one-line reason; callers
count and report it. Nothing here substitutes a blank image for a broken one.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageFile

# PIL must raise on truncated files instead of padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Chest radiographs are at most ~4,300 x 3,500 (15 Mpx); 64 Mpx leaves room for anything real while
# refusing files that declare absurd sizes to exhaust memory (decompression bombs).
MAX_PIXELS = 64_000_000
# Anything this small is a placeholder or thumbnail, not a radiograph (1x1 images exist in the wild).
MIN_SIDE = 16
FITS = ("pad", "crop")


class ImageError(ValueError):
  """An input that is not a usable radiograph. `reason` is one line, for skip reports."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def load(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
         draft_size: int | None = None) -> np.ndarray:
  """Reads and decodes an image file. Returns float32 (H, W) in [0, 1]."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise ImageError("missing file") from None
  except OSError as e:
    raise ImageError(f"unreadable file: {e.strerror or e}") from None
  return decode(data, max_pixels=max_pixels, draft_size=draft_size)


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> np.ndarray:
  """Decodes JPEG, PNG or DICOM bytes (sniffed, not trusted from the name). Returns float32 (H, W).

  Args:
    data: the file's bytes.
    max_pixels: larger declared sizes are refused before any pixel is decoded.
    draft_size: for JPEG, let libjpeg decode at a reduced scale that still covers this many pixels
      per side (much faster for a 3,000 px radiograph prepared at 512).
  """
  if not data:
    raise ImageError("empty file")
  if data[128:132] == b"DICM":
    return _decode_dicom(data, max_pixels)
  return _decode_pil(data, max_pixels, draft_size)


def _check_size(width: int, height: int, max_pixels: int) -> None:
  if width * height > max_pixels:
    raise ImageError(f"decompression bomb: declares {width}x{height} pixels (limit {max_pixels})")
  if min(width, height) < MIN_SIDE:
    raise ImageError(f"too small to be a radiograph: {width}x{height}")


def _decode_pil(data: bytes, max_pixels: int, draft_size: int | None) -> np.ndarray:
  fmt = {b"\xff\xd8": "JPEG", b"\x89P": "PNG"}.get(data[:2], "image")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data))
      _check_size(*im.size, max_pixels)
      if fmt == "JPEG" and draft_size:
        im.draft("L", (draft_size, draft_size))
      im.load()
  except ImageError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(f"decompression bomb: {e}") from None
  except Image.UnidentifiedImageError:
    raise ImageError("not a JPEG, PNG or DICOM image") from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise ImageError(f"corrupt or truncated {fmt}: {e}") from None
  if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    return _window(np.asarray(im))
  if im.mode != "L":
    im = im.convert("L")  # RGB, palette, 1-bit or with alpha: luminance is what a radiograph encodes.
  return _unit(np.asarray(im, dtype=np.float32) / 255.0)


def _decode_dicom(data: bytes, max_pixels: int) -> np.ndarray:
  import pydicom  # Deferred: only DICOM inputs pay for it.
  from pydicom import pixels

  try:
    ds = pydicom.dcmread(io.BytesIO(data))
    _check_size(int(ds.Columns), int(ds.Rows), max_pixels)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
      raise ImageError("multi-frame DICOM is not a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
      raise ImageError(f"DICOM photometric interpretation {photometric} is not grayscale")
    arr = ds.pixel_array
    arr = pixels.apply_modality_lut(arr, ds)  # Rescale slope/intercept (or a Modality LUT).
    arr = pixels.apply_voi_lut(arr, ds)       # VOI LUT or window center/width, when present.
  except ImageError:
    raise
  except AttributeError as e:
    raise ImageError(f"DICOM without image attributes: {e}") from None
  except Exception as e:  # pydicom raises many types for bad files; each is a skip, not a crash.
    raise ImageError(f"unreadable DICOM: {type(e).__name__}: {e}") from None
  img = _window(np.asarray(arr))
  # MONOCHROME1 stores bright as low values; after inversion 1 is bright as everywhere else.
  return 1.0 - img if photometric == "MONOCHROME1" else img


def _window(arr: np.ndarray) -> np.ndarray:
  """Linear map of the pixels' real [min, max] onto [0, 1]. float32 (H, W)."""
  arr = arr.astype(np.float32)
  lo, hi = float(arr.min()), float(arr.max())
  if not hi > lo:
    raise ImageError(f"blank image: every pixel is {lo:g}")
  return (arr - lo) / (hi - lo)


def _unit(img: np.ndarray) -> np.ndarray:
  if img.min() == img.max():
    raise ImageError(f"blank image: every pixel is {img.flat[0] * 255:g}")
  return img


def resize(img: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
  """Square `size` x `size` image: (H, W) -> (size, size), same dtype (float32 [0, 1] or uint8).

  fit="pad" scales the longer side to `size` and centers the image on black (nothing cut off, as
  a radiologist sees it); fit="crop" scales the shorter side to `size` and crops the center.
  Antialiased bilinear (PIL scales the filter support when shrinking); uint8 stays 8-bit (PIL's
  "L" mode, the fast path for prepared images), float32 is resized in "F" mode.
  """
  if fit not in FITS:
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
  h, w = img.shape
  scale = size / (max(h, w) if fit == "pad" else min(h, w))
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  if (nh, nw) != (h, w):
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
  if fit == "crop":
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size])
  if (nh, nw) == (size, size):
    return img
  out = np.zeros((size, size), img.dtype)
  top, left = (size - nh) // 2, (size - nw) // 2
  out[top:top + nh, left:left + nw] = img
  return out


def to_uint8(img: np.ndarray) -> np.ndarray:
  """float [0, 1] (H, W) -> uint8 (H, W), rounded."""
  return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
  """uint8 (H, W) -> 8-bit grayscale PNG bytes. Level 1: prepared data is read far more than written."""
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data: bytes, size: int | None = None) -> np.ndarray:
  """Prepared PNG bytes -> uint8 (H, W), or (size, size): prepared images are square, so no fit."""
  im = Image.open(io.BytesIO(data))
  im = im if im.mode == "L" else im.convert("L")
  if size is not None and im.size != (size, size):
    im = im.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(im)
