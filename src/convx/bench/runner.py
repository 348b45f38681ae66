"""Timing, memory measurement and machine description for ``python -m convx.bench``."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import sys
import math
import time
import tracemalloc
from collections.abc import Callable, Iterable

import numpy as np

from .. import _core, _threads
from .._version import __version__
from ._load import relative_iqr
from .cases import ConvCase, PoolCase
from .implementations import IMPLEMENTATIONS, channels_first_outputs


@dataclasses.dataclass
class Result:
    case: str
    op: str
    flops: float
    times: dict[str, float]  # implementation -> median seconds
    runs: dict[str, int]
    # implementation -> every timed run, seconds, in the order taken
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # implementation -> interquartile range / median of the runs
    spread: dict[str, float] = dataclasses.field(default_factory=dict)
    kind: str = "conv"  # "conv" or "pool"
    bytes_moved: int | None = None  # pooling: the bytes the op must read and write at least
    layout: str = "NCHW"  # convx's layout ("both": "convx" channels first, "convx_nhwc" channels last)
    # --layout both: the worst relative error (measure.relative_error) of the channels-last
    # outputs against the channels-first ones, over the op's outputs
    layout_error: float | None = None

    def time(self, name: str) -> float | None:
        """Median seconds of ``name``; ``'auto'``: Winograd's where it ran, else convx's."""
        if name == "auto":
            return self.times.get("winograd", self.times.get("convx"))
        return self.times.get(name)

    def ratio(self, numerator: str, denominator: str) -> float | None:
        top, bottom = self.time(numerator), self.time(denominator)
        if top is not None and bottom is not None:
            return top / bottom
        return None

    def rate(self) -> float | None:
        """convx's speed: FLOP/s for a convolution, bytes/s (read and written) for pooling."""
        seconds = self.times.get("convx")
        if not seconds:
            return None
        return (self.bytes_moved if self.kind == "pool" and self.bytes_moved is not None else self.flops) / seconds


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_details() -> dict:
    """x86 family and model numbers and the widest SIMD extension (what the model name, under a
    hypervisor often just "Intel(R) Xeon(R) Processor", does not say); empty where unknown."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    flags = set(fields.get("flags", "").split())
    simd = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), None)
    return {"cpu_family": fields.get("cpu family"), "cpu_model_number": fields.get("model"), "cpu_simd": simd}


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError:
        return None


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, libraries, BLAS, threads and allocator settings."""
    from threadpoolctl import threadpool_info

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "convx": __version__,
        "convx_openmp": _core.openmp_enabled(),
        "convx_threads": _threads.get_num_threads(),
        "blas": [
            {k: lib.get(k) for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")}
            | {"library": os.path.basename(lib["filepath"])}
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        ],
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "freed_memory_reused": _reusing_freed_memory,
        "transparent_hugepages": _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
        "transparent_hugepages_defrag": _read_first_line("/sys/kernel/mm/transparent_hugepage/defrag"),
    } | _cpu_details()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def _time_once(call: Callable[[], object], number: int = 1) -> float:
    """Seconds per call of ``number`` calls in a row."""
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


SETTLE_SECONDS = 0.3
# Untimed calls of each implementation, for at least this long, before its timed ones.
WARMUP_SECONDS = 0.02
# Each timed run is as many calls in a row as last this long (the run's time is their mean), so
# that microsecond calls are not timed one by one: --quick's batch-2 LeNet ops (30-100 us) read
# one call per run, and their medians moved by up to 3.2x between three runs on the idle Xeon
# (family 6 model 167, 2 threads); 43 of 100 (op, library) medians agreed within 15%.
MIN_RUN_SECONDS = 0.005
MAX_CALLS_PER_RUN = 1000


# glibc's mallopt parameters: arrays up to this size come from the heap (its most), and freed
# heap memory up to M_TRIM_THRESHOLD stays with the process.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_ARRAYS_UP_TO = 32 << 20
_KEEP_FREED = 1 << 30
_reusing_freed_memory = False


def reuse_freed_memory() -> bool:
    """Keep freed memory in the process for reuse (glibc only; False elsewhere, changing nothing).

    Each call allocates its outputs, and where those pages are new the call pays for their
    first touch. NumPy asks for huge pages on arrays of 4 MiB and more; where the kernel
    compacts memory for them on a fault (transparent huge pages with ``defrag=madvise``, as on
    the Xeon VM of the tuning comments) a new 25 MiB output cost 35-45 ms against 9 ms for the
    computation (resnet_stem's forward), and whether a call got new pages depended on what the
    other library freed just before: that op read 45 ms with PyTorch timed beside it, 9 ms
    without. With freed memory kept, both libraries reuse their pages after the warm-up, as a
    training loop repeating its shapes does.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    global _reusing_freed_memory
    _reusing_freed_memory = bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_ARRAYS_UP_TO)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED))
    return _reusing_freed_memory


def settle() -> None:
    """Wait until threads left spinning by a multi-threaded BLAS call have gone to sleep."""
    time.sleep(SETTLE_SECONDS)


def _warm_up(call: Callable[[], object], max_seconds: float) -> tuple[float, list[float], int]:
    """Untimed calls for ``WARMUP_SECONDS`` (at least one): seconds spent, the one call as a
    timed run if it alone took over a second (a call that long needs no warming, and NumPy's
    slowest references take many), and the calls per timed run (``MIN_RUN_SECONDS``)."""
    first = _time_once(call)
    if first > 1.0:
        return first, [first], 1
    spent, calls, end = first, 1, time.perf_counter() + WARMUP_SECONDS - first
    while time.perf_counter() < end and spent < max_seconds:
        spent += _time_once(call)
        calls += 1
    per_call = max(spent / calls, 1e-9)
    return spent, [], max(1, min(MAX_CALLS_PER_RUN, math.ceil(MIN_RUN_SECONDS / per_call)))


def time_case(
    case: ConvCase | PoolCase,
    ops: Iterable[str],
    implementations: Iterable[str],
    repeat: int,
    seed: int = 0,
    max_seconds: float = 20.0,
    reference_seconds: float | None = None,
    layout: str = "NCHW",
    settle_after: bool = True,
) -> list[Result]:
    """Every run of each op of ``case`` for each implementation, and their median.

    convx, its Winograd variant and PyTorch run round-robin: every repetition calls each once in
    turn, so slow drifts of a shared machine hit them alike (on Linux, convx and PyTorch's wheel
    share one libgomp, loaded once by its soname, so neither finds the other's threads still
    spinning, unlike ONNX Runtime's in ``--nets``). The NumPy
    reference runs first, every op of the case on its own, followed by one pause: its matrix
    products leave OpenBLAS's worker threads spinning for a while after they return (tens of
    milliseconds), which would steal a core from whichever library ran next. Each implementation
    is warmed up (``_warm_up``) before its timed runs. One whose calls exceed ``max_seconds`` in
    total (the NumPy reference: ``reference_seconds``, if given) stops early with the runs it has
    (at least one). ``settle_after=False`` leaves the pause after the NumPy reference to the caller
    (which times other cases' references first).

    ``layout``: convx's (and its Winograd variant's and PyTorch's, as ``torch.channels_last``)
    data layout, ``'NCHW'`` or ``'NHWC'`` (the NumPy reference stays channels first); ``'both'``
    adds convx channels last as ``'convx_nhwc'``, timed in the same rounds as the others, and
    compares its outputs with convx's channels-first ones (``Result.layout_error``).
    """
    arrays = case.arrays(np.random.default_rng(seed))
    implementations = list(implementations)
    if layout == "both" and "convx" in implementations and "convx_nhwc" not in implementations:
        implementations.insert(implementations.index("convx") + 1, "convx_nhwc")
    calls = {}
    for name in implementations:
        made = IMPLEMENTATIONS[name](case, arrays, layout)
        if made is not None:
            calls[name] = made
    together = [name for name in calls if name != "numpy"]
    selected = [op for op in ops if op in case.ops]
    samples: dict[str, dict[str, list[float]]] = {op: {name: [] for name in calls} for op in selected}

    budget = {name: max_seconds for name in calls}
    if reference_seconds is not None:
        budget["numpy"] = reference_seconds

    def run(op: str, group: list[str]) -> None:
        spent, number = {}, {}
        for name in group:
            spent[name], samples[op][name], number[name] = _warm_up(calls[name][op], budget[name])
        for _ in range(repeat):
            for name in group:
                if len(samples[op][name]) >= repeat or (samples[op][name] and spent[name] > budget[name]):
                    continue
                per_call = _time_once(calls[name][op], number[name])
                samples[op][name].append(per_call)
                spent[name] += per_call * number[name]

    if "numpy" in calls:
        for op in selected:
            run(op, ["numpy"])
        if settle_after:
            settle()
    results = []
    for op in selected:
        run(op, together)
        runs = samples[op]
        layout_error = None
        if "convx" in calls and "convx_nhwc" in calls:
            layout_error = layout_agreement(case, op, calls["convx"][op], calls["convx_nhwc"][op])
        results.append(
            _summarised(
                Result(
                    case.name,
                    op,
                    case.flops(op),
                    {},
                    {},
                    samples={name: list(s) for name, s in runs.items()},
                    kind=case.kind,
                    bytes_moved=sum(case.bytes_moved(op)) if isinstance(case, PoolCase) else None,
                    layout=layout,
                    layout_error=layout_error,
                )
            )
        )
    return results


def _summarised(result: Result) -> Result:
    """``result`` with each implementation's median, count and spread set from its runs."""
    result.times = {name: statistics.median(runs) for name, runs in result.samples.items()}
    result.runs = {name: len(runs) for name, runs in result.samples.items()}
    result.spread = {name: relative_iqr(runs) for name, runs in result.samples.items()}
    return result


def merge_passes(timed: Iterable[list[Result]]) -> list[Result]:
    """One result per (case, op) from the results of several passes over the cases (and of the NumPy
    reference timed apart): each implementation's runs in the order taken, their median and spread;
    the other fields from the first pass that timed the op."""
    merged: dict[tuple[str, str], Result] = {}
    for results in timed:
        for result in results:
            key = (result.case, result.op)
            if key not in merged:
                merged[key] = dataclasses.replace(result, times={}, runs={}, samples={}, spread={})
            first = merged[key]
            for name, runs in result.samples.items():
                first.samples.setdefault(name, []).extend(runs)
            if first.layout_error is None:
                first.layout_error = result.layout_error
    return [_summarised(result) for result in merged.values()]


def layout_agreement(case: ConvCase | PoolCase, op: str, first: Callable[[], object],
                     last: Callable[[], object]) -> float:
    """The worst relative error of the channels-last call's outputs against the channels-first
    call's, each output in channels-first order (as ``--nets`` measures libraries' agreement)."""
    from .nets.measure import relative_error

    references = first()
    references = references if isinstance(references, tuple) else (references,)
    values = channels_first_outputs(case, op, last())
    return max(relative_error(value, reference) for value, reference in zip(values, references))


def extra_memory(case: ConvCase | PoolCase, op: str, batch: int, implementation: str = "convx",
                 layout: str = "NCHW") -> int:
    """Peak bytes convx allocates for ``op`` beyond its outputs (traced by tracemalloc)."""
    sized = dataclasses.replace(case, batch=batch)
    arrays = sized.arrays(np.random.default_rng(0))
    call = IMPLEMENTATIONS[implementation](sized, arrays, layout)[op]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        outputs = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    flat = outputs if isinstance(outputs, tuple) else (outputs,)
    output_bytes = sum(a.nbytes for a in flat if isinstance(a, np.ndarray))
    return peak - before - output_bytes


def gemm_ceiling(case: ConvCase, threads: int, repeat: int, seed: int = 0) -> float:
    """FLOP/s of numpy's matmul on the forward pass's product, ``W (C_out, K) @ cols (K, N*H_out*W_out)``,
    with BLAS held at ``threads``: the rate an im2col convolution could reach at best."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    k = case.c_in // case.groups * case.kernel**2
    a = rng.standard_normal((case.c_out // case.groups, k)).astype(case.dtype)
    b = rng.standard_normal((k, case.batch * case.out_size**2)).astype(case.dtype)
    out = np.empty((a.shape[0], b.shape[1]), dtype=case.dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        seconds = statistics.median(_time_once(lambda: np.matmul(a, b, out=out)) for _ in range(repeat))
    settle()
    return case.groups * 2.0 * a.shape[0] * k * b.shape[1] / seconds


def thread_scaling(case: ConvCase, op: str, threads: int, repeat: int, seed: int = 0,
                   layout: str = "NCHW") -> tuple[float, float]:
    """Median seconds of convx's ``op`` on ``case`` with one thread and with ``threads``, interleaved."""
    from .implementations import convx_calls

    call = convx_calls(case, case.arrays(np.random.default_rng(seed)), layout)[op]
    previous = _threads.get_num_threads()
    samples: dict[int, list[float]] = {1: [], threads: []}
    try:
        for n in samples:
            _threads.set_num_threads(n)
            _time_once(call)
        for _ in range(repeat):
            for n in samples:
                _threads.set_num_threads(n)
                samples[n].append(_time_once(call))
    finally:
        _threads.set_num_threads(previous)
    return statistics.median(samples[1]), statistics.median(samples[threads])


def fused_backward(case: ConvCase, repeat: int, seed: int = 0, layout: str = "NCHW") -> tuple[float, float]:
    """Median seconds of convx's fused ``conv2d_backward`` on ``case`` and of the three separate
    calls it replaces (input, weight and bias gradients, back to back), interleaved."""
    from .. import functional
    from .implementations import channels_last, convx_calls, separate_backward

    arrays = case.arrays(np.random.default_rng(seed))
    fused = convx_calls(case, arrays, layout)["backward"]
    if layout == "NHWC":
        separate = separate_backward(functional, case, channels_last(arrays), layout="NHWC")
    else:
        separate = separate_backward(functional, case, arrays)
    samples: dict[str, list[float]] = {"fused": [], "separate": []}
    _time_once(fused)
    _time_once(separate)
    for _ in range(repeat):
        samples["fused"].append(_time_once(fused))
        samples["separate"].append(_time_once(separate))
    return statistics.median(samples["fused"]), statistics.median(samples["separate"])


def calibration(repeat: int = 9, seed: int = 0) -> float:
    """Median seconds of a fixed convolution on convx's threads (150 MFLOP, about a millisecond on
    two cores), timed at the start and the end of a run: if the two differ, the machine's speed
    changed. (With other processes on the cores, threads wait for each other: 0.9 ms became 20.)"""
    from .. import functional

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 32, 32, 32)).astype(np.float32)
    weight = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    call = lambda: functional.conv2d(x, weight, padding=1)  # noqa: E731
    _warm_up(call, 1.0)
    return statistics.median(_time_once(call) for _ in range(repeat))
