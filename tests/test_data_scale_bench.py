"""benchmarks/data_scale.py end to end at a toy size: prepare, read, restore, 1 and 2 readers."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_data_scale_prints_its_table(tmp_path):
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    import data_scale
  finally:
    sys.path.pop(0)
  out = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "data_scale.py"), "--sizes=200", "--batches=3", "--rounds=1",
       "--workers=1", "--batch_size=16", f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=120, check=True).stdout
  lines = out.splitlines()
  header = next(i for i, line in enumerate(lines) if line.split() == list(data_scale.COLUMNS))
  row = dict(zip(data_scale.COLUMNS, lines[header + 1].split()))
  assert row["size"] == "200" and row["same"] == "yes", out
  assert float(row["prep/s"]) > 0 and float(row["1proc/s"]) > 0 and float(row["2proc/s"]) > 0, out
  assert int(row["state_B"]) > 0, out
  assert not any(tmp_path.iterdir()), "generated data left behind without --keep"
