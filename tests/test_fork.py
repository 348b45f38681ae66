"""Processes made by os.fork() get a working convx.

GNU libgomp cannot start threads in a child forked after its parent ran a team of several: the
child's first such team waited forever. convx runs such a child (and its own children) on one
thread, says so once with a ForkedProcessWarning, and leaves every other child alone: spawn,
forkserver, and forks of a parent that never ran more than one thread.

Every scenario runs in a subprocess of its own, with a timeout and its whole process group
killed after it: a hang fails the test instead of hanging the run. Warnings are counted in
the scenarios themselves (this suite turns warnings into errors; the children do not).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import convx
import convx._core as core
import convx._threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")

# Minutes, for a loaded two-core machine; a hang is forever.
TIMEOUT = 240

# Shared by every scenario: every kind of kernel on inputs large enough for teams of two (the
# issue's max pool, a convolution above two CONV_GRAINs of multiply-adds, Winograd, nn.Linear's
# products), checked against convx.reference and NumPy, and the warnings it raised.
PRELUDE = textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    from threadpoolctl import threadpool_info
    import convx, convx._core, convx._threads
    import convx.functional as F
    from convx.reference import conv as reference_conv, pooling as reference_pooling

    def blas_counts():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    def work(dtype=np.float32):
        rng = np.random.default_rng(0)
        pooled = rng.standard_normal((8, 16, 32, 32)).astype(dtype)
        x = rng.standard_normal((8, 16, 16, 16)).astype(dtype)
        w = rng.standard_normal((16, 16, 3, 3)).astype(dtype)
        rows = rng.standard_normal((256, 512)).astype(dtype)
        layer = convx.nn.Linear(512, 64, dtype=dtype, rng=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = [
                (convx.max_pool2d(pooled, 2), reference_pooling.max_pool2d(pooled, 2)),
                (F.conv2d(x, w, padding=1), reference_conv.conv2d(x, w, padding=1)),
                (F.conv2d(x, w, padding=1, algorithm="winograd"), reference_conv.conv2d(x, w, padding=1)),
                (layer(rows), rows @ layer.params["weight"].T + layer.params["bias"]),
                (rows @ rows.T, (rows.astype(np.float64) @ rows.T.astype(np.float64)).astype(dtype)),
            ]
        tol = 1e-3 if dtype == np.float32 else 1e-9
        right = all(np.allclose(got, want, rtol=tol, atol=tol) for got, want in outputs)
        forked = [w for w in caught if issubclass(w.category, convx.ForkedProcessWarning)]
        return {
            "right": right,
            "fork_warnings": len(forked),
            "warned_at": [os.path.basename(w.filename) for w in forked],
            "other_warnings": [str(w.message) for w in caught if w not in forked],
        }

    def status():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", convx.ForkedProcessWarning)
            kernel_threads = convx._threads.kernel_threads()
        return {
            "pid": os.getpid(),
            "capped": convx._threads.fork_capped(),
            "reason": convx._threads._fork_cap_reason,
            "config_capped": convx._config.config()["fork_capped"],
            "threads": convx.get_num_threads(),
            "kernel_threads": kernel_threads,
            "blas_users": convx._core._blas_state()[0],
            "blas": blas_counts(),
        }

    def report(tag, **fields):
        print(tag, json.dumps(fields), flush=True)

    def forked(child):
        # Run child() in a forked process; its exit status says whether it finished.
        pid = os.fork()
        if pid == 0:
            try:
                child()
                code = 0
            except BaseException as exc:
                print("child failed:", repr(exc), file=sys.stderr, flush=True)
                code = 1
            sys.stdout.flush()
            os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    """
)


def _run(script, tmp_path, first=""):
    """Run ``first + PRELUDE + script`` as a file (spawned processes re-import it); return its reports
    as {tag: [fields, ...]}. A run past TIMEOUT is killed with all its descendants and fails."""
    path = tmp_path / "scenario.py"
    path.write_text(first + PRELUDE + textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="2")
    process = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the scenario hung (killed after {TIMEOUT} s)\n{stdout}\n{stderr}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any process it left behind
        except ProcessLookupError:
            pass
    assert process.returncode == 0, f"{stdout}\n{stderr}"
    reports = {}
    for line in stdout.splitlines():
        tag, _, fields = line.partition(" ")
        reports.setdefault(tag, []).append(json.loads(fields))
    return reports


def _gomp():
    if not core.openmp_enabled():
        pytest.skip("a serial build starts no threads")
    if not convx._threads._FORK_UNSAFE_OPENMP:
        pytest.skip(f"{convx._threads._OPENMP_LIBRARY}: not GNU libgomp, whose children are not capped")


def test_a_child_forked_after_multi_thread_calls_runs_on_one_thread_and_says_so_once(tmp_path):
    _gomp()
    reports = _run(
        """
        convx.set_num_threads(2)
        report("parent", **work(), **status())

        def grandchild():
            report("grandchild", **work(), **status())

        def child():
            first = work()
            again = work(np.float64)
            convx.set_num_threads(3)  # accepted, and kept, but the kernels stay at one thread
            third = work()
            report("child", first=first, again=again, third=third, **status())
            report("grandchild_exit", code=forked(grandchild))

        report("child_exit", code=forked(child))
        report("parent_after", **work(), **status())
        """,
        tmp_path,
    )
    [parent], [child], [grandchild], [after] = (reports[tag] for tag in ("parent", "child", "grandchild", "parent_after"))
    assert reports["child_exit"] == [{"code": 0}] and reports["grandchild_exit"] == [{"code": 0}]
    assert parent["right"] and parent["fork_warnings"] == 0 and not parent["capped"] and parent["kernel_threads"] == 2
    # The child: right answers, one warning (pointing at the caller's file), then none.
    assert child["first"]["right"] and child["again"]["right"] and child["third"]["right"]
    assert child["first"]["fork_warnings"] == 1 and child["first"]["warned_at"] == ["scenario.py"]
    assert child["again"]["fork_warnings"] == 0 and child["third"]["fork_warnings"] == 0
    assert child["capped"] and child["config_capped"] and child["kernel_threads"] == 1 and child["threads"] == 3
    # Its own child inherits the cap (the stale pool came along), and warns once itself.
    assert grandchild["right"] and grandchild["fork_warnings"] == 1
    assert grandchild["capped"] and grandchild["kernel_threads"] == 1 and grandchild["threads"] == 3
    # BLAS keeps its threads in the children (OpenBLAS restarts its own pool after a fork).
    for report in (child, grandchild):
        assert report["blas"] == parent["blas"] and report["blas_users"] == 0
        assert report["pid"] != parent["pid"]
    assert after["right"] and not after["capped"] and after["kernel_threads"] == 2
    for report in (parent, child["first"], child["again"], grandchild, after):
        assert report["other_warnings"] == []


def test_a_child_forked_before_any_multi_thread_call_keeps_its_threads(tmp_path):
    _gomp()
    reports = _run(
        """
        def child():
            report("child", **work(), **status())

        report("untouched_exit", code=forked(child))  # convx imported, nothing run
        convx.set_num_threads(1)
        report("parent", **work(), **status())
        convx.set_num_threads(2)
        report("one_thread_exit", code=forked(child))  # only teams of one so far
        """,
        tmp_path,
    )
    assert reports["untouched_exit"] == [{"code": 0}] and reports["one_thread_exit"] == [{"code": 0}]
    assert reports["parent"][0]["right"]
    assert len(reports["child"]) == 2
    for child in reports["child"]:
        assert child["right"] and child["fork_warnings"] == 0 and child["other_warnings"] == []
        assert not child["capped"] and child["kernel_threads"] == 2


@pytest.mark.parametrize("first", ["torch", "convx"], ids=["torch-imported-first", "convx-imported-first"])
def test_a_child_forked_after_pytorch_ran_teams_on_the_same_libgomp_is_capped(first, tmp_path):
    # A GCC-built convx and PyTorch share one libgomp (the loader keeps one libgomp.so.1,
    # PyTorch's copy or the system's, whichever came first): PyTorch's teams alone made the
    # child's first convx team wait forever.
    _gomp()
    pytest.importorskip("torch")
    reports = _run(
        """
        import torch
        torch.set_num_threads(2)
        big = torch.randn(1000, 1000)
        assert torch.allclose(big @ big, torch.from_numpy(big.numpy() @ big.numpy()), atol=1e-3)
        torch.nn.functional.max_pool2d(torch.randn(8, 16, 64, 64), 2)
        convx.set_num_threads(2)  # but no convx call before the fork

        def child():
            report("child", **work(), **status())

        report("exit", code=forked(child))
        """,
        tmp_path,
        first="import torch\n" if first == "torch" else "",
    )
    assert reports["exit"] == [{"code": 0}]
    [child] = reports["child"]
    assert child["right"] and child["fork_warnings"] == 1 and child["other_warnings"] == []
    assert child["capped"] and child["kernel_threads"] == 1 and "libtorch" in child["reason"], child


def test_a_child_forked_while_the_blas_limit_is_held_starts_with_it_released(tmp_path):
    # Held by another Python thread (which the child does not have), and by the forking
    # thread itself (whose exit in the child must then change nothing).
    reports = _run(
        """
        import threading
        before = blas_counts()
        entered, leave = threading.Event(), threading.Event()

        def holder():
            with convx._threads.single_threaded_blas():
                entered.set()
                leave.wait(timeout=120)

        def child():
            report("child", **status())
            with convx._threads.single_threaded_blas():
                report("child_inside", **status())
            report("child_after", **work(np.float64), **status())

        thread = threading.Thread(target=holder)
        thread.start()
        entered.wait(timeout=120)
        report("parent_held", **status())
        report("exit", code=forked(child))
        with convx._threads.single_threaded_blas():
            report("exit", code=forked(child))
        leave.set()
        thread.join()
        report("parent", before=before, **status())
        """,
        tmp_path,
    )
    [parent] = reports["parent"]
    before = parent["before"]
    assert before and all(n > 1 for n in before), before  # else there is nothing to restore
    assert reports["parent_held"][0]["blas"] == [1] * len(before)
    assert reports["exit"] == [{"code": 0}, {"code": 0}]
    for child, inside, after in zip(reports["child"], reports["child_inside"], reports["child_after"], strict=True):
        assert child["blas"] == before and child["blas_users"] == 0
        assert inside["blas"] == [1] * len(before) and inside["blas_users"] == 1
        assert after["right"] and after["blas"] == before and after["blas_users"] == 0
    assert parent["blas"] == before and parent["blas_users"] == 0


POOLS = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

def job(_):
    return {**work(), **status()}

if __name__ == "__main__":
    convx.set_num_threads(2)
    report("parent", **work(), **status())
    for method in ("fork", "forkserver", "spawn"):
        context = multiprocessing.get_context(method)
        with context.Pool(2) as pool:
            report("pool", method=method, results=pool.map_async(job, range(4)).get(timeout=180))
        with ProcessPoolExecutor(2, mp_context=context) as executor:
            report("executor", method=method, results=list(executor.map(job, range(4), timeout=180)))
    with ProcessPoolExecutor(2) as executor:  # the platform's default start method
        report("executor", method=multiprocessing.get_start_method(), results=list(executor.map(job, range(4), timeout=180)))
"""


def test_process_pools_work_with_every_start_method(tmp_path):
    if not core.openmp_enabled():
        pytest.skip("a serial build starts no threads")
    reports = _run(POOLS, tmp_path)
    assert reports["parent"][0]["right"]
    runs = reports["pool"] + reports["executor"]
    assert len(runs) == 7
    for run in runs:
        capped = run["method"] == "fork" and convx._threads._FORK_UNSAFE_OPENMP
        warnings_per_process = {}
        for result in run["results"]:
            assert result["right"] and result["other_warnings"] == [], (run["method"], result)
            assert result["capped"] is capped and result["kernel_threads"] == (1 if capped else 2), run
            warnings_per_process[result["pid"]] = warnings_per_process.get(result["pid"], 0) + result["fork_warnings"]
        # Once in every worker that ran a job, however many it ran.
        assert set(warnings_per_process.values()) == ({1} if capped else {0}), (run["method"], warnings_per_process)


def test_the_warning_is_public_and_a_runtime_warning():
    assert convx.ForkedProcessWarning is convx._threads.ForkedProcessWarning
    assert issubclass(convx.ForkedProcessWarning, RuntimeWarning)
    assert "ForkedProcessWarning" in convx.__all__
    assert not convx._threads.fork_capped()  # this process was not forked from a capped one
