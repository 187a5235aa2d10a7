"""Test setup: 8 CPU devices for mesh tests, set before anything imports jax."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain worker processes read absl flags; tests run without absl.app, so mark them parsed.
flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: real-model or multi-second tests (still run in CI; keep few)")


@pytest.fixture(scope="session")
def asset():
  """`asset("smollm2")` -> path of a cached offline asset (fetched by `make test` beforehand)."""
  from data_pipelines import assets
  return assets.path
