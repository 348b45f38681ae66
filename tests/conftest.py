"""Shared test configuration: per-dtype tolerances and the optional PyTorch oracle."""

import numpy as np
import pytest

# One place for tolerances: (rtol, atol) per dtype for comparisons with the references.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}

DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype=None):
    """Compare with the dtype's tolerance, scaling atol by the magnitude of the expected data."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = np.dtype(dtype or actual.dtype)
    tol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def torch():
    """The torch module, or a clean skip when PyTorch is not installed."""
    return pytest.importorskip("torch")
