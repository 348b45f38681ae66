"""Thread counts and thread safety of the convolution ops.

Results must not depend on the OpenMP team size (beyond float rounding), the thread-count
setter must validate its argument, and ops called from several Python threads at once must
give what serial calls give.
"""

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _helpers import CONV_OPS, DTYPE_IDS, SPECIAL_CASES, TRANSPOSE_CASES, ConvCase, run_conv_op
from conftest import DTYPES, REAL_ELEMENT_GRAIN, assert_close

import convx
import convx._threads
import convx.functional as F
from convx.reference import conv as reference


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield original
    convx.set_num_threads(original)


# Team sizes 1 (blocks of small images), 2 (the core count) and 3 (more threads than images,
# so single images are split into row chunks).
THREAD_COUNTS = [1, 2, 3]

THREAD_CASES = {
    name: SPECIAL_CASES[name]
    for name in [
        "asymmetric-everything",
        "1x1",
        "1x1-grouped",
        "same-even-kernel",
        "depthwise-wide-rows",
        "depthwise-x2-wide-rows",
        "many-small-images",
        "many-small-images-grouped",
        "many-small-images-depthwise",
        "one-tall-image",
        "one-wide-image-strided",
        "unbatched-depthwise",
        "chunked-rows-strided-dilated",
    ]
}
THREAD_CASES["odd-batch"] = ConvCase(5, 6, 9, 10, 4, (3, 3), stride=(1, 2), padding=1, groups=2)
THREAD_CASES["odd-batch-small-planes"] = ConvCase(7, 3, 4, 4, 5, (2, 2), padding=1)
THREAD_CASES["odd-batch-1x1"] = ConvCase(5, 4, 6, 6, 3, (1, 1))


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("name", list(THREAD_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thread_counts_agree(dtype, name, op, rng, restore_threads):
    case = THREAD_CASES[name]
    arrays = case.arrays(rng, dtype)
    expected = run_conv_op(reference, op, *arrays, case.kwargs)
    results = {}
    for n_threads in THREAD_COUNTS:
        convx.set_num_threads(n_threads)
        assert convx.get_num_threads() == n_threads
        results[n_threads] = run_conv_op(F, op, *arrays, case.kwargs)
    for n_threads, outputs in results.items():
        for out, one_thread, ref in zip(outputs, results[1], expected, strict=True):
            assert_close(out, one_thread, dtype)
            assert_close(out, ref, dtype)


@pytest.mark.parametrize("name", ["depthwise", "many-small-images", "unbatched", "chunked-rows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_thread_counts_agree(dtype, name, rng, restore_threads):
    case = TRANSPOSE_CASES[name]
    x, weight, bias = case.arrays(rng, dtype)
    expected = reference.conv_transpose2d(x, weight, bias, **case.kwargs)
    for n_threads in THREAD_COUNTS:
        convx.set_num_threads(n_threads)
        assert_close(F.conv_transpose2d(x, weight, bias, **case.kwargs), expected, dtype)


def test_default_thread_count_is_positive():
    n_threads = convx.get_num_threads()
    assert isinstance(n_threads, int)
    assert n_threads >= 1


@pytest.mark.parametrize("module", [convx, convx._threads], ids=["convx", "convx._threads"])
def test_set_and_get_round_trip(module, restore_threads):
    module.set_num_threads(1)
    assert module.get_num_threads() == 1
    module.set_num_threads(np.int64(3))
    assert module.get_num_threads() == 3
    assert type(module.get_num_threads()) is int
    assert convx.get_num_threads() == convx._threads.get_num_threads() == 3


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (2.0, TypeError),
        (True, TypeError),
        (np.True_, TypeError),
        ("2", TypeError),
        (None, TypeError),
        ((1, 1), TypeError),
    ],
    ids=["zero", "negative", "fraction", "integral-float", "True", "np.True_", "str", "None", "tuple"],
)
@pytest.mark.parametrize("module", [convx, convx._threads], ids=["convx", "convx._threads"])
def test_bad_thread_count_raises_and_changes_nothing(module, value, error, restore_threads):
    before = module.get_num_threads()
    with pytest.raises(error, match=r"\bn\b"):
        module.set_num_threads(value)
    assert module.get_num_threads() == before


def test_huge_thread_count_is_refused_or_harmless(restore_threads, rng):
    # A count that no OpenMP team can have (and that overflows a C int): set_num_threads
    # must refuse it with a ValueError naming n, or the ops must still run with it.
    x = rng.standard_normal((2, 3, 8, 8))
    weight = rng.standard_normal((4, 3, 3, 3))
    try:
        convx.set_num_threads(2**31)
    except ValueError as exc:
        assert re.search(r"\bn\b", str(exc))
        return
    assert_close(F.conv2d(x, weight, padding=1), reference.conv2d(x, weight, padding=1))
    assert_close(F.conv2d(x, weight[:, :1], groups=3), reference.conv2d(x, weight[:, :1], groups=3))


CONCURRENT_CASES = [
    ConvCase(3, 4, 12, 11, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
    ConvCase(4, 6, 10, 13, 6, (3, 3), padding="same", groups=6),
    ConvCase(9, 3, 5, 4, 4, (2, 2), padding=1),
    ConvCase(2, 3, 8, 9, 5, (1, 1)),
    ConvCase(1, 16, 200, 200, 4, (3, 3), padding=1),
]


def _all_ops(case, arrays):
    x, weight, bias, grad_out = arrays
    kwargs = case.kwargs
    results = [F.conv2d(x, weight, bias, **kwargs)]
    results.append(F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs))
    results.append(F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs))
    results.append(F.conv2d_backward_bias(grad_out))
    results.extend(F.conv2d_backward(grad_out, x, weight, **kwargs))
    # The transposed convolution of grad_out, with the same weight read as (C_in, C_out / groups, kH, kW).
    padding = 0 if isinstance(case.padding, str) else case.padding
    results.append(F.conv_transpose2d(grad_out, weight, None, case.stride, padding, 0, case.groups, case.dilation))
    return results


@pytest.mark.parametrize("n_threads", [1, 2], ids=["omp-1", "omp-2"])
def test_concurrent_calls_from_python_threads_match_serial_calls(n_threads, rng, restore_threads):
    convx.set_num_threads(n_threads)
    jobs = []
    for case in CONCURRENT_CASES:
        for dtype in DTYPES:
            jobs.append((case, case.arrays(rng, dtype)))
    serial = [_all_ops(case, arrays) for case, arrays in jobs]
    # Every job three times, interleaved, on more Python threads than cores.
    order = [i for _ in range(3) for i in range(len(jobs))]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [(i, pool.submit(_all_ops, *jobs[i])) for i in order]
        concurrent = [(i, future.result(timeout=120)) for i, future in futures]
    for i, results in concurrent:
        dtype = jobs[i][1][0].dtype
        for got, expected in zip(results, serial[i], strict=True):
            assert got.shape == expected.shape
            assert_close(got, expected, dtype)


def test_memory_bound_kernels_take_one_thread_per_grain_of_elements(monkeypatch, restore_threads, rng):
    monkeypatch.setattr(convx._threads, "ELEMENT_GRAIN", REAL_ELEMENT_GRAIN)
    convx.set_num_threads(2)
    two = 2 if convx._core.openmp_enabled() else 1  # a serial build runs everything on one
    grain = REAL_ELEMENT_GRAIN
    assert convx._threads.kernel_threads(elements=0) == 1
    assert convx._threads.kernel_threads(elements=2 * grain - 1) == 1
    assert convx._threads.kernel_threads(elements=2 * grain) == two
    assert convx._threads.kernel_threads(elements=10**12) == two
    assert convx._threads.kernel_threads(10**12, elements=grain) == 1
    # What the kernels are handed: a small array's activation and bias gradient on one thread, a
    # large one's on two, with the same results.
    handed = []
    for name in ("activation_forward", "conv2d_backward_bias"):
        real = getattr(convx._core, name)
        monkeypatch.setattr(convx._core, name, lambda *args, real=real: handed.append(args[-1]) or real(*args))
    for shape in [(2, 6, 28, 28), (8, 16, 32, 32)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(F.relu(x), np.maximum(x, 0))
        assert_close(F.conv2d_backward_bias(x), x.sum(axis=(0, 2, 3), dtype=np.float64), np.float32)
    assert handed == [1, 1, two, two]
