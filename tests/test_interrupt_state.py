"""An exception at any bytecode of a call leaves the process's global state as it was: the
BLAS thread counts and convx's BLAS limit bookkeeping (convx._threads.single_threaded_blas),
NumPy's error state, the kernel settings and the thread count.

CPython raises KeyboardInterrupt between bytecodes (at calls, backward jumps, right after a C
call returns); a tracer with ``f_trace_opcodes`` that raises at the Nth event of every Python
frame, for N = 1, 2, ... until a call runs untouched, tries every such point and more. (A
leaked limit used to leave NumPy's BLAS at one thread for the rest of the process: a
2000 x 2000 matmul 0.155 s -> 0.281 s.)
"""

import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import assert_close
from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

import convx
from convx.nn import module as nn_module
import convx._core as core
import convx._products
import convx._threads
import convx.functional as F
from convx.reference import conv as reference


class _Injected(KeyboardInterrupt):
    """The tracer's KeyboardInterrupt (a subclass, so that nothing else is caught by mistake)."""


class _Tracer:
    """Raise _Injected at the ``fire_at``-th trace event (call, line, opcode, return,
    exception) of any Python frame started while it is installed, noting whether the BLAS
    limit was held at that moment."""

    def __init__(self, fire_at):
        self.events = 0
        self.fire_at = fire_at
        self.held_when_fired = False

    def __call__(self, frame, event, arg):
        frame.f_trace_opcodes = True
        return self._event(frame, event, arg)

    def _event(self, frame, event, arg):
        self.events += 1
        if self.events == self.fire_at:
            self.held_when_fired = core._blas_state()[0] > 0
            raise _Injected(f"event {self.fire_at}: {event} in {frame.f_code.co_name}")
        return self._event


def _blas_counts(controller=None):
    """The thread count of each BLAS loaded: from a fresh scan of the process's libraries, or
    from ``controller`` (a ThreadpoolController: the libraries it found, their counts read now)."""
    info = threadpool_info() if controller is None else controller.info()
    return [lib["num_threads"] for lib in info if lib["user_api"] == "blas"]


def _global_state(controller=None):
    users, restore = core._blas_state()
    return {
        "blas_users": users,
        "blas_restore": [n for _, n in restore],
        "blas_counts": _blas_counts(controller),
        "numpy_errstate": np.geterr(),
        "gemm_kernel": core.gemm_kernel(),
        "direct_conv": core.direct_conv(),
        "threads": convx.get_num_threads(),
        # convx.nn's per-thread settings: a stuck call depth would merge every later pass.
        "nn_depth": nn_module._state.depth,
        "nn_grad_enabled": nn_module._state.grad_enabled,
        # NumPy's memory handler: convx's cache of freed buffers only while a layer runs.
        "numpy_memory_handler": get_handler_name(),
    }


def _interrupt_everywhere(call, expected_state, most=200_000):
    """Run ``call`` interrupted at its 1st, 2nd, ... trace event until it completes untouched,
    checking ``_global_state()`` after every run. Returns (runs interrupted, of which while
    the limit was held)."""
    held = 0
    # The BLAS libraries are looked up once, their counts read after every run: a fresh scan
    # of the process's libraries after every run (1 ms, thousands of runs) took most of these
    # tests' time. A library loaded during the runs stays loaded, so the fresh scan after the
    # last run (below) still sees it and its count.
    controller = ThreadpoolController()
    # No collections during a run: a gc callback (Hypothesis installs one) would be traced too,
    # and its interrupt reported as unraisable rather than reaching the call.
    collecting = gc.isenabled()
    for fire_at in range(1, most):
        tracer = _Tracer(fire_at)
        gc.disable()
        sys.settrace(tracer)
        try:
            call()
        except _Injected:
            interrupted = True
        else:
            interrupted = False
        finally:
            sys.settrace(None)
            if collecting:
                gc.enable()
        state = _global_state(controller)
        assert state == expected_state, (fire_at, tracer.held_when_fired, state, expected_state)
        held += tracer.held_when_fired
        if not interrupted:
            state = _global_state()
            assert state == expected_state, ("after the last run, every library scanned anew", state, expected_state)
            return fire_at - 1, held
    pytest.fail(f"{call} still interrupted after {most} events")


@pytest.fixture
def two_blas_threads():
    """Every BLAS at two threads (so that the limit has counts to change and restore), the limit
    already looked up (its first use calls threadpoolctl: see the subprocess test below)."""
    if not _blas_counts():
        pytest.skip("no BLAS found by threadpoolctl")
    with convx._threads.single_threaded_blas():
        pass
    with threadpool_limits(limits=2, user_api="blas"):
        assert core._blas_state() == (0, [])
        yield _global_state()
    assert core._blas_state() == (0, [])


def _nested_limits():
    with convx._threads.single_threaded_blas():
        with convx._threads.single_threaded_blas():
            assert core._blas_state()[0] >= 2
        with convx._threads.single_threaded_blas():
            pass


def test_nested_limits_interrupted_anywhere_restore_everything(two_blas_threads):
    interrupted, held = _interrupt_everywhere(_nested_limits, two_blas_threads)
    assert interrupted > 20 and held > 5, (interrupted, held)


def test_an_interrupted_limit_leaves_another_threads_hold_alone(two_blas_threads):
    # Another Python thread holds the limit throughout: each interrupted run must give back
    # exactly its own uses, leaving BLAS at one thread for the other holder.
    entered, leave = threading.Event(), threading.Event()

    def holder():
        with convx._threads.single_threaded_blas():
            entered.set()
            leave.wait(timeout=120)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert entered.wait(timeout=60)
        during = _global_state()
        assert during["blas_users"] == 1 and during["blas_counts"] == [1] * len(during["blas_counts"])
        assert during["blas_restore"] == [2] * len(during["blas_counts"])
        interrupted, _ = _interrupt_everywhere(_nested_limits, during)
        assert interrupted > 20
    finally:
        leave.set()
        thread.join(timeout=60)
    assert _global_state() == two_blas_threads


def test_a_limit_dropped_while_held_is_left():
    # What a `with` statement whose __exit__ call was skipped leaves behind.
    limit = convx._threads.single_threaded_blas()
    limit.__enter__()
    assert core._blas_state()[0] == 1
    del limit
    assert core._blas_state() == (0, [])


def test_a_limit_is_entered_once():
    limit = convx._threads.single_threaded_blas()
    with limit:
        with pytest.raises(RuntimeError, match="already entered"):
            limit.__enter__()
        assert core._blas_state()[0] == 1
    assert core._blas_state() == (0, [])
    with limit:  # after its exit it may be used again
        assert core._blas_state()[0] == 1
    assert core._blas_state() == (0, [])


@pytest.fixture
def small_conv(rng):
    x = rng.standard_normal((2, 4, 6, 6))
    weight = rng.standard_normal((5, 4, 3, 3))
    grad_out = rng.standard_normal((2, 5, 6, 6))
    return x, weight, grad_out


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_winograd_calls_interrupted_anywhere_restore_everything(op, n_threads, small_conv, two_blas_threads):
    # The calls of the issue: Winograd's 36 point products are BLAS GEMMs under the limit.
    x, weight, grad_out = small_conv
    previous = convx.get_num_threads()
    convx.set_num_threads(n_threads)
    try:
        expected_state = _global_state()
        if op == "forward":
            call = lambda: F.conv2d(x, weight, padding=1, algorithm="winograd")  # noqa: E731
        else:
            call = lambda: F.conv2d_backward(grad_out, x, weight, padding=1, algorithm="winograd")  # noqa: E731
        interrupted, _ = _interrupt_everywhere(call, expected_state)
        assert interrupted > 100
        assert_close(F.conv2d(x, weight, padding=1, algorithm="winograd"), reference.conv2d(x, weight, padding=1))
    finally:
        convx.set_num_threads(previous)


def test_blas_gemm_and_matmul_calls_interrupted_anywhere_restore_everything(small_conv, two_blas_threads):
    # The im2col path through BLAS, nn.Linear's products, and the products too large for BLAS's
    # int sizes (NumPy's matmul under errstate: here every product, by lowering the bound).
    x, weight, grad_out = small_conv
    layer = convx.nn.Linear(36, 7, dtype=np.float64, rng=0)
    rows = x.reshape(8, 36)
    saved = core.gemm_kernel(), core.direct_conv()
    core.set_gemm_kernel("blas")
    core.set_direct_conv("off")
    try:
        expected_state = _global_state()
        for call in [
            lambda: F.conv2d(x, weight, padding=1),
            lambda: F.conv2d_backward(grad_out, x, weight, padding=1),
            lambda: layer.backward(layer(rows) * 0 + 1),
        ]:
            interrupted, _ = _interrupt_everywhere(call, expected_state)
            assert interrupted > 50
    finally:
        core.set_gemm_kernel(saved[0])
        core.set_direct_conv(saved[1])
    big = np.full((3, 2), 1e308)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convx._products, "_BLAS_INT_MAX", 1)
        interrupted, _ = _interrupt_everywhere(lambda: convx._products.matmul(big, big.T), _global_state())
        assert interrupted > 10
        assert np.isinf(convx._products.matmul(big, big.T)).all()


# The first use of the limit looks the libraries up with threadpoolctl (Python, some 150000
# trace events with threadpoolctl 3.7, some thousands with 3.1), changing nothing until it is
# done: so, in a fresh process, it is interrupted at every STRIDE-th event until a use gets
# through. STRIDE 0 only counts the events of one uninterrupted first use.
FIRST_USE = textwrap.dedent(
    """
    import sys
    from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits
    import convx._core as core, convx._threads

    STRIDE = int(sys.argv[1])

    class Injected(KeyboardInterrupt):
        pass

    def counts():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    def in_ctypes_callback(frame):
        while frame is not None:
            if frame.f_code.co_name == "match_library_callback":
                return True
            frame = frame.f_back
        return False

    def run(fire_at):
        events = [0]

        def local(frame, event, arg):
            # ctypes swallows (and prints) an exception raised in a callback, such as
            # threadpoolctl's dl_iterate_phdr one: an interrupt there is lost before convx sees it.
            if in_ctypes_callback(frame):
                return local
            events[0] += 1
            if events[0] == fire_at:
                raise Injected
            return local

        def tracer(frame, event, arg):
            frame.f_trace_opcodes = True
            return local(frame, event, arg)

        sys.settrace(tracer)
        try:
            with convx._threads.single_threaded_blas():
                inside.append(counts())
        except Injected:
            return True
        finally:
            sys.settrace(None)
        return False

    if STRIDE == 0:
        events = [0]

        def counting(frame, event, arg):
            frame.f_trace_opcodes = True
            events[0] += not in_ctypes_callback(frame)
            return counting

        with threadpool_limits(limits=2, user_api="blas"):  # as the runs below start
            counts()
            sys.settrace(counting)
            with convx._threads.single_threaded_blas():
                pass
            sys.settrace(None)
        print(events[0])
        sys.exit(0)

    with threadpool_limits(limits=2, user_api="blas"):
        before = counts()
        inside = []
        fire_at = 1
        while run(fire_at):
            assert core._blas_state() == (0, []), (fire_at, core._blas_state())
            assert counts() == before, (fire_at, counts(), before)
            fire_at += STRIDE
        assert core._blas_state() == (0, []) and counts() == before
        assert inside[-1] == [1] * len(before), inside
    print(len(before), fire_at // STRIDE)
    """
)


def test_the_first_use_interrupted_while_it_looks_the_libraries_up_changes_nothing():
    if not _blas_counts():
        pytest.skip("no BLAS found by threadpoolctl")
    def first_use(stride):
        result = subprocess.run([sys.executable, "-c", FIRST_USE, str(stride)], capture_output=True, text=True,
                                timeout=300, env=_child_env())
        assert result.returncode == 0, result.stderr
        return result.stdout

    # Some 150-300 interruptions spread over the whole lookup, whatever threadpoolctl's length (its
    # imports, done by the first attempts, leave the later ones shorter).
    events = int(first_use(0))
    libraries, runs = map(int, first_use(max(1, events // 300)).split())
    assert libraries == len(_blas_counts()) and runs > 100, (events, runs)


def _child_env():
    import os

    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def _clear_openblas_claim():
    """Let this thread set a pthreads OpenBLAS's count (threadpoolctl 3.7 and later give it to
    the first thread that sets it; earlier versions have no claim to clear)."""
    import threadpoolctl

    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def test_only_libraries_not_already_at_one_thread_are_set_and_restored(two_blas_threads):
    import threadpoolctl

    libraries = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
    if len(libraries) < 2:
        pytest.skip("needs two BLAS libraries (NumPy's and SciPy's)")
    first = libraries[0]
    _clear_openblas_claim()
    first.set_num_threads(1)
    _clear_openblas_claim()
    try:
        with convx._threads.single_threaded_blas():
            users, restore = core._blas_state()
            assert users == 1 and [n for _, n in restore] == [2] * (len(libraries) - 1)
            assert first.filepath not in [library.filepath for library, _ in restore]
            assert _blas_counts() == [1] * len(libraries)
        assert first.get_num_threads() == 1
        assert sorted(_blas_counts()) == [1] + [2] * (len(libraries) - 1)
    finally:
        first.set_num_threads(2)
        _clear_openblas_claim()


def test_nn_calls_interrupted_anywhere_restore_the_module_state(rng):
    # Module calls (depth and pass bookkeeping) and no_grad blocks, interrupted at every trace event.
    nn = convx.nn
    block = nn.Residual(nn.Sequential(nn.Linear(6, 6, dtype=np.float64, rng=0), nn.ReLU()), activation=nn.Tanh())
    x = rng.standard_normal((3, 6))

    def step():
        y = block(x)
        block.backward(np.ones_like(y))
        with nn.no_grad():
            block(x)

    expected = _global_state()
    interrupted, _ = _interrupt_everywhere(step, expected)
    assert interrupted > 100
    # And the next pass is a fresh one: its gradients replace, they do not add.
    y = block(x)
    block.backward(np.ones_like(y))
    first = block.grads["body.0.weight"].copy()
    y = block(x)
    block.backward(np.ones_like(y))
    np.testing.assert_array_equal(block.grads["body.0.weight"], first)
