"""The offline-asset fetcher: idempotent, verifies hashes, one clear error without a network."""
import os
import subprocess
import sys

import pytest

from data_pipelines import assets


def test_second_run_does_no_work_and_products_are_complete(asset):
  path = asset("iu_reports")
  assert len(list((path / "ecgen-radiology").glob("*.xml"))) == 3955
  assert assets._complete(path, assets.PACKAGES["torchxrayvision"].sha256)
  assert asset("iu_reports") == path  # no rebuild: the marker still matches


def test_a_damaged_product_is_rebuilt(tmp_path, monkeypatch, asset):
  # A private cache holding the real (verified) download; the product is then damaged.
  real = asset("radiograph").parent / "downloads" / assets.PACKAGES["pydicom-data"].filename
  (tmp_path / "downloads").mkdir()
  os.symlink(real, tmp_path / "downloads" / real.name)
  monkeypatch.setenv("CXRCLIP_CACHE", str(tmp_path))
  built = assets.path("radiograph")
  (built / "RG1_UNCR.dcm").write_bytes(b"truncated")
  assert not assets._complete(built, assets.PACKAGES["pydicom-data"].sha256)
  rebuilt = assets.path("radiograph")
  assert (rebuilt / "RG1_UNCR.dcm").stat().st_size == 7200056


def test_corrupt_download_is_detected(tmp_path, monkeypatch):
  monkeypatch.setenv("CXRCLIP_CACHE", str(tmp_path))
  pkg = assets.PACKAGES["pydicom-data"]
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads" / pkg.filename).write_bytes(b"partial download")
  assert not assets._verified(tmp_path / "downloads" / pkg.filename, pkg)


def test_no_network_gives_one_line_error(tmp_path):
  # Only a dead local index: no config files, no find-links, no extra indexes.
  env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
  env.update(CXRCLIP_CACHE=str(tmp_path), PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
             PIP_TIMEOUT="2", PIP_CONFIG_FILE=os.devnull)
  proc = subprocess.run([sys.executable, "-m", "data_pipelines.assets", "--only=radiograph"], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: could not download pydicom-data==1.0.0"), proc.stderr
