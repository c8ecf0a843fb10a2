"""Test setup: eight fake CPU devices so every sharding path runs, and absl flags parsed.

This module must run before the first JAX operation: the CPU device count is fixed when
the backend starts.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

# Grain reads an absl flag in worker processes; outside absl.app.run the flags are unparsed.
flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real datasets beside the checkout (`../shared/data`); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (only present on development machines)")
    return SHARED_DATA
