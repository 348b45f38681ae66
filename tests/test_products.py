"""convx._products.matmul (nn.Linear's and the whole-window convolutions' products) against numpy."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close

from convx._products import matmul


def _operand(rng, shape, dtype, layout):
    """A (rows, cols) operand: C-contiguous, the transpose of one, or strided (copied by matmul)."""
    if layout == "c":
        return rng.standard_normal(shape).astype(dtype)
    if layout == "transposed":
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal((shape[0], 2 * shape[1])).astype(dtype)[:, ::2]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout_b", ["c", "transposed", "strided"])
@pytest.mark.parametrize("layout_a", ["c", "transposed", "strided"])
# rows split over the threads (more rows than columns, or 8 or more per thread), columns split
# (a few rows), one row, a row per thread, a depth of one
@pytest.mark.parametrize("m, k, n", [(37, 19, 5), (30, 7, 41), (3, 20, 50), (1, 9, 13), (3, 4, 3), (17, 1, 6)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_matmul_matches_numpy(rng, dtype, m, k, n, layout_a, layout_b, threads):
    a = _operand(rng, (m, k), dtype, layout_a)
    b = _operand(rng, (k, n), dtype, layout_b)
    a_before, b_before = a.copy(), b.copy()
    out = np.full((m, n), np.nan, dtype)
    assert matmul(a, b, out, threads) is out
    assert_close(out, a.astype(np.float64) @ b.astype(np.float64), dtype)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)
    assert matmul(a, b).dtype == dtype


def test_matmul_of_empty_operands():
    a = np.ones((0, 4))
    b = np.ones((4, 3))
    assert matmul(a, b).shape == (0, 3)
    np.testing.assert_array_equal(matmul(np.ones((2, 0)), np.ones((0, 3))), np.zeros((2, 3)))


def test_matmul_propagates_nan_and_inf_without_warnings(rng):
    a = rng.standard_normal((20, 6))
    b = rng.standard_normal((6, 9))
    a[3, 2], a[7, 0], b[1, 4] = np.nan, np.inf, -np.inf
    got = matmul(a, b, n_threads=2)
    with np.errstate(all="ignore"):
        want = a @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], np.float64)
