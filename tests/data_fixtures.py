"""Tiny datasets in the exact on-disk layout of each source, written into a test's tmp dir.

Images are small synthetic radiographs (a bright body with dark lungs, ~64 px) so decoding is real
and fast; the broken inputs each policy is tested against are written on purpose.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import pathlib

import numpy as np
from PIL import Image

REPORT = ("FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n FINDINGS: There is a small left pleural "
          "effusion. No pneumothorax. Heart size is normal.\n\n IMPRESSION: Small left pleural effusion.\n")
NORMAL = "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax.\n\nIMPRESSION: No acute process."


def radiograph(seed: int, size: tuple[int, int] = (72, 64), bits: int = 8) -> np.ndarray:
  """A synthetic chest image: uint8, or uint16 using only part of the 16-bit range."""
  rng = np.random.default_rng(seed)
  h, w = size
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
  lungs = ((x - 0.3) ** 2 / 0.02 + (y - 0.45) ** 2 / 0.08 < 1) | ((x - 0.7) ** 2 / 0.02 + (y - 0.45) ** 2 / 0.08 < 1)
  img = 0.8 - 0.5 * lungs + 0.05 * rng.standard_normal(size)
  img = np.clip(img, 0, 1)
  if bits == 16:
    return (1000 + img * 3000).astype(np.uint16)  # A 12-bit range inside 16 bits: needs windowing.
  return (img * 255).astype(np.uint8)


def write_image(path: pathlib.Path, pixels: np.ndarray, fmt: str | None = None) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, format=fmt or path.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
  return path


def png_bytes(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  return buf.getvalue()


def write_corrupt_jpeg(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(radiograph(99)).save(buf, format="JPEG")
  path.write_bytes(buf.getvalue()[:200])  # The header survives, the scan data does not.


def write_truncated_png(path: pathlib.Path) -> None:
  data = png_bytes(radiograph(98))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data[:len(data) // 2])


def write_csv(path: pathlib.Path, rows: list[dict], gz: bool = False) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  data = buf.getvalue().encode("utf-8")
  if gz:
    path = path.with_name(path.name + ".gz")
    data = gzip.compress(data)
  path.write_bytes(data)


def write_dicom(path: pathlib.Path, pixels: np.ndarray, monochrome1: bool = True,
                window: tuple[float, float] | None = None, slope: float = 1.0, intercept: float = 0.0) -> None:
  """A minimal valid CR DICOM (explicit VR little endian) around uint16 pixels."""
  import pydicom
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality = "CR"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def mimic_cxr(root: pathlib.Path, *, overlap: bool = False) -> pathlib.Path:
  """5 studies of 3 patients; one lateral-only study, one with a corrupt JPEG, a non-UTF-8 report,
  an empty report; `overlap` puts one patient's studies in two splits (the official split may)."""
  studies = [  # subject, study, [(dicom, view)], split, report bytes
      ("10000032", "50414267", [("d1", "PA"), ("d2", "LATERAL")], "train", REPORT.encode()),
      ("10000032", "53189527", [("d3", "AP")], "test" if overlap else "train", NORMAL.encode()),
      ("10000764", "57375967", [("d4", "LL")], "validate", NORMAL.encode()),
      ("10000898", "50771383", [("d5", "PA"), ("d6", "AP")], "test",
       "FINDINGS: Peque\xf1o derrame pleural.\n\nIMPRESSION: Effusion.".encode("latin-1")),
      ("10000898", "54205396", [("d7", "PA")], "test", b"   \n"),
  ]
  meta, split = [], []
  for subject, study, dicoms, sp, report in studies:
    folder = root / f"files/p{subject[:2]}/p{subject}/s{study}"
    for k, (dicom, view) in enumerate(dicoms):
      meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view,
                   "Rows": 72, "Columns": 64})
      split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": sp})
      if dicom == "d6":
        write_corrupt_jpeg(folder / f"{dicom}.jpg")
      else:
        write_image(folder / f"{dicom}.jpg", radiograph(int(study) % 1000 + k))
    (folder.parent / f"s{study}.txt").write_bytes(report)
  write_csv(root / "mimic-cxr-2.0.0-metadata.csv", meta, gz=True)
  write_csv(root / "mimic-cxr-2.0.0-split.csv", split, gz=True)
  return root


def chexpert_plus(root: pathlib.Path) -> pathlib.Path:
  rows = []
  for p, (split, n_studies) in enumerate([("train", 2), ("valid", 1)]):
    for s in range(1, n_studies + 1):
      for v, fl in ((1, "Frontal"), (2, "Lateral")):
        rel = f"{split}/patient{p:05d}/study{s}/view{v}_{fl.lower()}.jpg"
        write_image(root / "PNG" / rel.replace(".jpg", ".png"), radiograph(p * 10 + s + v))
        rows.append({"path_to_image": rel, "path_to_dcm": rel.replace(".jpg", ".dcm"), "frontal_lateral": fl,
                     "ap_pa": "PA" if fl == "Frontal" else "", "deid_patient_id": f"pid{p}",
                     "patient_report_date_order": s, "report": REPORT, "section_narrative": "",
                     "section_findings": "The lungs are clear." if s == 1 else "",
                     "section_impression": "No acute disease." if s == 1 else "", "split": split})
  write_csv(root / "df_chexpert_plus_240401.csv", rows)
  return root


def iu_xray(root: pathlib.Path, reports_dir: pathlib.Path | None = None, n: int = 3) -> pathlib.Path:
  """IU layout. With `reports_dir` (the real ecgen-radiology cache) its first n XMLs are linked in."""
  xml_dir = root / "ecgen-radiology"
  xml_dir.mkdir(parents=True)
  for i in range(1, n + 1):
    image_ids = [f"CXR{i}_1_IM-000{i}-1001", f"CXR{i}_1_IM-000{i}-2001"]
    body = "".join(f'<parentImage id="{x}"><caption>Xray Chest PA and Lateral</caption></parentImage>'
                   for x in image_ids)
    findings = "" if i == n else "The heart is normal in size. There is no focal consolidation."
    xml = (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{i}"/><MedlineCitation><Article>'
           f'<Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
           f'<AbstractText Label="IMPRESSION">{"" if i == n else "Normal chest x-XXXX."}</AbstractText>'
           f'</Abstract></Article></MedlineCitation>{body}</eCitation>')
    (xml_dir / f"{i}.xml").write_text(xml)
    for k, x in enumerate(image_ids):
      write_image(root / "NLMCXR_png" / f"{x}.png", radiograph(i * 7 + k))
  return root


def padchest(root: pathlib.Path) -> pathlib.Path:
  """16-bit PNGs in ImageDir folders; one truncated PNG; Spanish reports."""
  rows = []
  for s in range(4):
    for k, projection in enumerate(("PA", "L")):
      image = f"img{s}_{k}.png"
      if s == 3 and k == 0:
        write_truncated_png(root / "0" / image)
      else:
        write_image(root / "0" / image, radiograph(s * 3 + k, bits=16))
      rows.append({"ImageID": image, "ImageDir": "0", "StudyID": f"st{s}", "PatientID": f"pt{s // 2}",
                   "Projection": projection, "ViewPosition_DICOM": projection,
                   "Report": "pequeño derrame pleural izquierdo ." if s % 2 else "sin hallazgos patologicos ."})
  write_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", rows)
  return root


def manifest(root: pathlib.Path, rows: list[dict] | None = None, n: int = 12, fmt: str = "jsonl") -> pathlib.Path:
  """A generic manifest of n studies (one patient each, alternating splits) with real images."""
  if rows is None:
    rows = []
    for i in range(n):
      write_image(root / "img" / f"{i}.png", radiograph(i))
      findings = ["Small right pleural effusion.", "The lungs are clear.", "Mild cardiomegaly."][i % 3]
      rows.append({"image": f"img/{i}.png", "report": f"[FINDINGS] {findings} No pneumothorax. "
                   f"[IMPRESSION] Finding number {i}.", "study_id": f"s{i}", "patient_id": f"p{i}",
                   "split": ["train", "train", "validation", "test"][i % 4] if i >= 4 else "train"})
  if fmt == "jsonl":
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  else:
    write_csv(root / "manifest.csv", rows)
  return root


class WordTokenizer:
  """A stand-in for an HF fast tokenizer (the calls Llm2VecTokenizer makes): one id per word,
  BOS prepended, pad = eos. Fast and picklable, for pipeline tests that do not test tokenization."""

  bos_token_id, eos_token_id, pad_token_id = 1, 2, 2
  eos_token, mask_token, mask_token_id = "</s>", None, None
  all_special_ids = [1, 2]
  vocab_size = 1000

  def __len__(self) -> int:
    return self.vocab_size

  def _ids(self, text: str) -> list[int]:
    span = self.vocab_size - 3
    return [3 + int.from_bytes(w.encode()[:3].ljust(3, b"\0"), "little") % span for w in text.split()]

  def __call__(self, texts, truncation=True, max_length=None, add_special_tokens=True):
    single = isinstance(texts, str)
    rows = []
    for t in [texts] if single else texts:
      ids = ([self.bos_token_id] if add_special_tokens else []) + self._ids(t)
      rows.append(ids[:max_length] if truncation and max_length else ids)
    return {"input_ids": rows[0] if single else rows}

  def convert_tokens_to_ids(self, token: str) -> int:
    return self._ids(token)[0]


FINDING_REPORTS = ("Small right pleural effusion.", "The lungs are clear.", "Mild cardiomegaly.")


def finding_radiograph(seed: int, finding: int, size: tuple[int, int] = (72, 64)) -> np.ndarray:
  """`radiograph(seed)` with the finding drawn in: an opaque right base (effusion), nothing
  (clear lungs), or a wide bright heart (cardiomegaly). A signal a tiny tower can learn."""
  img = radiograph(seed, size).astype(np.float32) / 255
  h, w = size
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
  if finding == 0:
    img[(y > 0.6) & (x < 0.45)] = 0.95
  elif finding == 2:
    img[(x - 0.5) ** 2 / 0.06 + (y - 0.62) ** 2 / 0.03 < 1] = 0.95
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def learnable_manifest(root: pathlib.Path, n: int = 48) -> pathlib.Path:
  """n studies whose images show their report's finding (manifest() images carry none)."""
  rows = []
  for i in range(n):
    write_image(root / "img" / f"{i}.png", finding_radiograph(i, i % 3))
    rows.append({"image": f"img/{i}.png", "report": f"[FINDINGS] {FINDING_REPORTS[i % 3]} No pneumothorax. "
                 f"[IMPRESSION] Finding number {i}.", "study_id": f"s{i}", "patient_id": f"p{i}",
                 "split": ["train", "train", "train", "test"][(i // 3) % 4]})
  return manifest(root, rows)


def prepared_learnable(root: pathlib.Path, n: int = 48) -> str:
  """`learnable_manifest` prepared (32 px, shards of 16): a small dataset every trainer test reads."""
  from data_pipelines import prepare
  src = learnable_manifest(root / "src", n=n)
  prepare.run(prepare.Options("manifest", str(root / "prepared"), str(src), image_size=32, shard_size=16))
  return str(root / "prepared")
