"""Shared test configuration: per-dtype tolerances, the optional PyTorch oracle, Hypothesis
profiles and the ``slow`` marker.

Hypothesis profiles, chosen by ``CONVX_HYPOTHESIS_PROFILE``:

``ci`` (default)
    A few dozen examples per property, derandomised (the same examples on every run, so the
    ordinary test run is fast and never flaky) and without an example database.
``thorough``
    Thousands of examples per property, fresh random ones on every run, failures kept in the
    ``.hypothesis/`` database and replayed first next time (``.ci/reliability.sh``).

Tests marked ``slow`` (minutes of CPU or gigabytes of address space) run only with
``--run-slow``.
"""

import contextlib
import os
import warnings

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property-based modules skip themselves (pytest.importorskip)
    settings = None

if settings is not None:
    # On a failure Hypothesis writes a patch of the failing examples with libcst, when that is
    # installed; some libcst versions warn on import (mypy_extensions.TypedDict), and under
    # filterwarnings=error that warning would become an INTERNALERROR hiding the failure
    # itself. So the module is imported once here, quietly (skipped where libcst is missing).
    with warnings.catch_warnings(), contextlib.suppress(ImportError):
        warnings.simplefilter("ignore", DeprecationWarning)
        import hypothesis.extra._patching  # noqa: F401

    # Health checks that measure the machine rather than the test: on a loaded 2-core CI box
    # a slow example or a large draw must not fail the run (and under filterwarnings=error
    # nothing may be left to warn either).
    _RELAXED = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                              suppress_health_check=_RELAXED, print_blob=True)
    settings.register_profile("thorough", max_examples=2500, deadline=None, suppress_health_check=_RELAXED,
                              print_blob=True)
    settings.load_profile(os.environ.get("CONVX_HYPOTHESIS_PROFILE", "ci"))


import convx._threads  # noqa: E402

# Memory-bound kernels run one thread per ELEMENT_GRAIN elements at most, and tests use small
# arrays: with the grain at 1 every test runs its kernels on the threads it sets (the parallel
# code stays under test); test_threads checks the grain itself at its real value, kept here.
REAL_ELEMENT_GRAIN = convx._threads.ELEMENT_GRAIN


@pytest.fixture(autouse=True)
def _threads_at_any_size(monkeypatch):
    monkeypatch.setattr(convx._threads, "ELEMENT_GRAIN", 1)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes of CPU or gigabytes of memory; run with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

# One place for tolerances: (rtol, atol) per dtype for comparisons with the references.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}

# algorithm="winograd": F(4x4, 3x3)'s transforms add rounding error in proportion to the
# largest values of each tile, not to the sum of |products| (README, "Guarantees").
WINOGRAD_TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-3, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
}

DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype=None, tolerances=TOLERANCES):
    """Compare with the dtype's tolerance, scaling atol by the magnitude of the expected data."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = np.dtype(dtype or actual.dtype)
    tol = tolerances[dtype]
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    rtol, atol = tol["rtol"], tol["atol"] * scale
    # Fast path, for the passing case: with finite expected values, the bound
    # np.testing.assert_allclose checks is |actual - expected| <= atol + rtol * |expected|, the
    # same expression in the same dtypes. A NaN or infinite actual value fails it (its difference
    # is NaN or infinite) and goes, like any other miss and any non-finite expected value, to
    # assert_allclose itself, which judges those (equal NaNs and infinities pass) and writes the
    # report. assert_allclose's machinery took most of the time of the tests that compare
    # thousands of small arrays.
    if actual.dtype.kind == "f" and expected.dtype.kind == "f" and np.isfinite(expected).all():
        with np.errstate(over="ignore", invalid="ignore"):
            if np.all(np.abs(actual - expected) <= atol + rtol * np.abs(expected)):
                return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def torch():
    """The torch module, or a clean skip when PyTorch is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_on_one_thread():
    """PyTorch as the oracle on arrays of a few hundred elements: its own OpenMP team spinning
    beside convx's makes each of its calls slow on a busy 2-core machine. A test module takes it
    with ``pytestmark = pytest.mark.usefixtures("torch_on_one_thread")``."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
