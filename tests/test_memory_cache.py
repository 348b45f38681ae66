"""The cache of freed array buffers convx's layers allocate from (convx.set_memory_cache).

Reference behaviour: inside ``_core.CachedMemory()`` NumPy allocates through the handler named
``convx_cache``; a freed buffer of at least ``MEMORY_CACHE_MIN`` bytes is kept (up to the limit)
and handed back, at the same address, to the next array of exactly its size, whenever and
wherever that array was freed; outside, NumPy's own handler runs and nothing is kept.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

import convx
from convx import _core, _memory, nn

BIG = _core.MEMORY_CACHE_MIN // 8  # float64 elements of the smallest cached buffer


@pytest.fixture
def cache():
    """An empty cache with a 64 MiB limit; the default limit and an empty cache afterwards."""
    convx.set_memory_cache(64 << 20)
    convx.clear_memory_cache()
    yield
    convx.set_memory_cache()
    convx.clear_memory_cache()


def _allocate(n, fill=None):
    with _core.CachedMemory():
        a = np.empty(n)
    if fill is not None:
        a.fill(fill)
    return a


def test_the_handler_runs_only_inside_the_scope(cache):
    assert get_handler_name() != "convx_cache"
    with _core.CachedMemory():
        assert get_handler_name() == "convx_cache"
        a = np.empty(BIG)
    assert get_handler_name() != "convx_cache"
    assert get_handler_name(a) == "convx_cache"
    assert get_handler_name(np.empty(BIG)) != "convx_cache"


def test_a_freed_buffer_is_reused_for_the_same_size_only(cache):
    a = _allocate(BIG, 1.0)
    address = a.ctypes.data
    del a
    state = convx.get_memory_cache()
    assert state["cached"] == BIG * 8 and state["buffers"] == 1
    smaller = _allocate(BIG - 1)
    assert smaller.ctypes.data != address and convx.get_memory_cache()["buffers"] == 1
    hits = convx.get_memory_cache()["hits"]
    again = _allocate(BIG)
    assert again.ctypes.data == address
    assert convx.get_memory_cache()["hits"] == hits + 1
    assert convx.get_memory_cache()["cached"] == 0


def test_small_buffers_and_zeros_are_not_kept_and_zeros_are_zero(cache):
    small = _allocate(BIG // 2)
    del small
    assert convx.get_memory_cache()["cached"] == 0
    a = _allocate(BIG, 7.0)
    del a
    with _core.CachedMemory():
        z = np.zeros(BIG)
    assert not z.any()


def test_an_array_freed_outside_the_scope_still_returns_its_buffer(cache):
    arrays = [_allocate(BIG * (i + 1)) for i in range(3)]
    del arrays
    assert convx.get_memory_cache()["buffers"] == 3


def test_the_limit_holds_and_the_oldest_go_first(cache):
    convx.set_memory_cache(3 * BIG * 8)
    arrays = [_allocate(BIG, float(i)) for i in range(5)]
    addresses = [a.ctypes.data for a in arrays]
    while arrays:
        arrays.pop(0)  # freed in the order allocated
    state = convx.get_memory_cache()
    assert state["buffers"] == 3 and state["cached"] == 3 * BIG * 8
    assert _allocate(BIG).ctypes.data == addresses[-1]
    # a lower limit frees down to it; a buffer larger than the limit is never kept
    convx.set_memory_cache(BIG * 8)
    assert convx.get_memory_cache()["cached"] <= BIG * 8
    big = _allocate(2 * BIG)
    del big
    assert convx.get_memory_cache()["cached"] <= BIG * 8


def test_a_zero_limit_keeps_nothing(cache):
    convx.set_memory_cache(0)
    a = _allocate(BIG)
    del a
    assert convx.get_memory_cache()["cached"] == 0
    with _core.CachedMemory():
        assert get_handler_name() != "convx_cache"


def test_layers_reuse_their_buffers_and_compute_the_same(cache, rng):
    layer = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    x = rng.standard_normal((4, 3, 40, 40)).astype(np.float32)
    first = layer(x)
    grad = layer.backward(np.ones_like(first))
    outputs = [first.copy(), grad.copy()]
    del first, grad
    hits = convx.get_memory_cache()["hits"]
    second = layer(x)
    grad = layer.backward(np.ones_like(second))
    assert convx.get_memory_cache()["hits"] > hits
    np.testing.assert_array_equal(second, outputs[0])
    np.testing.assert_array_equal(grad, outputs[1])
    assert get_handler_name(second) == "convx_cache"


def test_threads_allocating_and_freeing_at_once(cache):
    errors = []

    def work(seed):
        try:
            for i in range(200):
                a = _allocate(BIG * (1 + (seed + i) % 3), float(seed))
                if not (a == seed).all():
                    errors.append(seed)
                del a
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert convx.get_memory_cache()["cached"] <= 64 << 20


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("4096", 4096), ("512M", 512 << 20), ("2GiB", 2 << 30),
                                                ("1k", 1024), (" 3 MB ", 3 << 20)])
def test_sizes_parse(text, expected):
    assert _memory.parse_size(text) == expected


def test_bad_limits_are_refused(cache):
    for bad, error in [(-1, ValueError), (True, TypeError), (1.5, TypeError), ("lots", ValueError),
                       ("-5M", ValueError), ([1], TypeError)]:
        with pytest.raises(error, match="limit|size"):
            convx.set_memory_cache(bad)
    assert convx.get_memory_cache()["limit"] == 64 << 20
    scope = _core.CachedMemory()
    with scope:
        pass
    with pytest.raises(RuntimeError, match="once"):
        with scope:
            pass


@pytest.mark.parametrize(("value", "limit"), [("0", 0), ("128M", 128 << 20), (None, None)])
def test_the_environment_variable_sets_the_limit(value, limit):
    env = {k: v for k, v in os.environ.items() if k != _memory.ENVIRONMENT_VARIABLE}
    if value is not None:
        env[_memory.ENVIRONMENT_VARIABLE] = value
    out = subprocess.run([sys.executable, "-c", "import convx; print(convx.get_memory_cache()['limit'])"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert int(out) == (_memory.default_limit() if limit is None else limit)


def test_a_nonsense_environment_variable_warns_and_keeps_the_default():
    env = dict(os.environ, **{_memory.ENVIRONMENT_VARIABLE: "plenty"})
    run = subprocess.run([sys.executable, "-W", "always", "-c",
                          "import convx; print(convx.get_memory_cache()['limit'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert int(run.stdout) == _memory.default_limit()
    assert "CONVX_MEMORY_CACHE" in run.stderr and "ignored" in run.stderr
