"""Image decoding, windowing, resizing, augmentation and normalization (data_pipelines/images.py,
data_pipelines/image_augment.py), on synthetic files and the real pydicom-data radiograph."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import data_fixtures as fx
from data_pipelines import image_augment, images


def _reason(data: bytes) -> str:
  with pytest.raises(images.ImageError) as e:
    images.decode(data)
  return e.value.reason


def test_8bit_jpeg_and_png_are_divided_by_255(tmp_path):
  pixels = fx.radiograph(0)
  png = images.decode(fx.png_bytes(pixels))
  np.testing.assert_allclose(png, pixels / 255.0, atol=1e-6)
  jpeg = images.load(fx.write_image(tmp_path / "a.jpg", pixels))
  assert jpeg.dtype == np.float32 and jpeg.shape == pixels.shape
  assert np.abs(jpeg - pixels / 255.0).mean() < 0.03  # Lossy, but not rescaled.


def test_color_image_becomes_luminance():
  rgb = np.stack([fx.radiograph(1)] * 3, axis=-1)
  np.testing.assert_allclose(images.decode(fx.png_bytes(rgb)), fx.radiograph(1) / 255.0, atol=1 / 255)


def test_16bit_png_is_windowed_from_its_real_range_never_clipped():
  pixels = fx.radiograph(2, bits=16)  # Values in [1000, 4000] of 65535.
  assert Image.open(io.BytesIO(fx.png_bytes(pixels))).mode.startswith("I")
  out = images.decode(fx.png_bytes(pixels))
  lo, hi = pixels.min(), pixels.max()
  np.testing.assert_allclose(out, (pixels.astype(np.float64) - lo) / (hi - lo), atol=1e-6)
  # Exactly one pixel value maps to each end: nothing was clipped into saturation.
  assert (out == 0).sum() == (pixels == lo).sum() and (out == 1).sum() == (pixels == hi).sum()


def test_dicom_monochrome1_is_inverted_and_monochrome2_is_not(tmp_path):
  raw = fx.radiograph(3, bits=16)
  fx.write_dicom(tmp_path / "m1.dcm", raw, monochrome1=True)
  fx.write_dicom(tmp_path / "m2.dcm", raw, monochrome1=False)
  m1, m2 = images.load(tmp_path / "m1.dcm"), images.load(tmp_path / "m2.dcm")
  np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
  bright = raw > np.median(raw)
  assert m2[bright].mean() > m2[~bright].mean() and m1[bright].mean() < m1[~bright].mean()


def test_dicom_window_and_rescale_are_applied(tmp_path):
  raw = fx.radiograph(4, bits=16)
  center = float(np.median(raw))
  fx.write_dicom(tmp_path / "w.dcm", raw, monochrome1=False, window=(center, 400.0))
  windowed = images.load(tmp_path / "w.dcm")
  # The narrow window saturates what lies outside it, as the file asks.
  assert (windowed == 0).mean() > 0.1 and (windowed == 1).mean() > 0.1
  fx.write_dicom(tmp_path / "r.dcm", raw, monochrome1=False, slope=-1.0, intercept=5000.0)
  np.testing.assert_allclose(images.load(tmp_path / "r.dcm"), 1.0 - images.decode(fx.png_bytes(raw)), atol=1e-6)


def test_real_radiograph(asset):
  img = images.load(asset("radiograph") / "RG1_UNCR.dcm")  # CR, MONOCHROME1, 15-bit.
  assert img.shape == (1955, 1841) and img.min() == 0.0 and img.max() == 1.0
  h, w = img.shape
  # After inversion the mediastinum (center column) is brighter than the lungs beside it.
  assert img[h // 3:h // 2, w // 2 - 40:w // 2 + 40].mean() > img[h // 3:h // 2, w // 4 - 40:w // 4 + 40].mean()


@pytest.mark.parametrize("write, expected", [
    (fx.write_corrupt_jpeg, "corrupt or truncated JPEG"),
    (fx.write_truncated_png, "corrupt or truncated PNG"),
])
def test_broken_files_raise_with_a_reason(tmp_path, write, expected):
  write(tmp_path / "x")
  with pytest.raises(images.ImageError, match=expected):
    images.load(tmp_path / "x")


def test_rejections_name_their_reason(tmp_path):
  assert _reason(fx.png_bytes(np.zeros((1, 1), np.uint8))) == "too small to be a radiograph: 1x1"
  assert _reason(b"") == "empty file"
  assert _reason(b"not an image at all" * 20) == "not a JPEG, PNG or DICOM image"
  assert _reason(fx.png_bytes(np.full((40, 40), 7, np.uint8))).startswith("blank image")

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
  assert _reason(bomb).startswith("decompression bomb")
  with pytest.raises(images.ImageError, match="missing file"):
    images.load(tmp_path / "nope.png")


def test_resize_pad_and_crop():
  wide = np.ones((40, 80), np.float32)
  padded = images.resize(wide, 32, "pad")
  assert padded.shape == (32, 32)
  assert padded[:7].max() == 0 and padded[-7:].max() == 0 and padded[10:22].min() > 0.99
  cropped = images.resize(wide, 32, "crop")
  assert cropped.shape == (32, 32) and cropped.min() > 0.99
  with pytest.raises(ValueError):
    images.resize(wide, 32, "stretch")


def test_png_round_trip():
  pixels = fx.radiograph(5)
  np.testing.assert_array_equal(images.decode_png(images.encode_png(pixels)), pixels)


def test_augment_is_seeded_and_keeps_laterality():
  img = np.zeros((64, 64), np.uint8)
  img[:, :24] = 200  # Bright left third: a flip would move it right.
  a = image_augment.augment(img, np.random.default_rng(7))
  b = image_augment.augment(img, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.uint8 and a.shape == (64, 64) and not np.array_equal(a, img)
  for seed in range(10):
    out = image_augment.augment(img, np.random.default_rng(seed)).astype(float)
    assert out[:, :20].mean() > out[:, -20:].mean() + 100
  flipped = image_augment.augment(img, np.random.default_rng(0), image_augment.AugmentConfig(hflip_p=1.0))
  assert flipped[:, -20:].astype(float).mean() > flipped[:, :20].mean() + 100
  identity = image_augment.AugmentConfig(0, 0, 0, 0, 0, 0)
  np.testing.assert_array_equal(image_augment.augment(img, np.random.default_rng(0), identity), img)


def test_clahe_raises_local_contrast():
  rng = np.random.default_rng(0)
  img = (100 + 10 * rng.random((64, 96))).astype(np.uint8)  # Low contrast.
  out = image_augment.clahe(img, clip_limit=2.0, tiles=4)
  assert out.dtype == np.uint8 and out.shape == img.shape
  assert out.std() > 2 * img.std()
  # Monotonic within a tile: brighter input never maps darker.
  tile_in, tile_out = img[:16, :24].ravel(), out[:16, :24].ravel()
  order = np.argsort(tile_in, kind="stable")
  assert np.all(np.diff(tile_out[order].astype(int)) >= -1)


def test_normalize():
  out = image_augment.normalize(np.array([[[0, 255, 51]]], np.uint8), mean=0.5, std=0.25)
  assert out.shape == (1, 1, 3, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, :, 0], [-2.0, 2.0, -1.2], rtol=1e-6)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_resize_keeps_uint8():
  out = images.resize(fx.radiograph(6), 32)
  assert out.dtype == np.uint8 and out.shape == (32, 32)
