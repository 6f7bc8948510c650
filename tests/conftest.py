"""Test-wide setup: eight fake CPU devices, so sharding is exercised on any machine.

XLA reads the flag once, when jax initialises its backend, so it is set here,
before any test module imports jax. Single-device comparisons build their own
one-device mesh from `jax.devices()[:1]`.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# hypothesis' pytest plugin imports hypothesis only when the session ends if no test did;
# by then (after jax and orbax ran) CPython 3.11.7's ast.parse, used by pytest's assertion
# rewriting, can fail with "AST constructor recursion depth mismatch", so import it now.
import hypothesis  # noqa: E402, F401
import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
