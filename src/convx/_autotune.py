"""Kernel choice by measurement: :func:`set_autotune`, the cache of tuned choices, :func:`explain`.

convx's convolutions have several implementations (channels-last direct tiles, packed GEMM,
im2col with BLAS, plane-wise and 1x1 kernels, Winograd), and by default pick one from rules
measured on a few CPUs (the thresholds in ``_conv_*.pxi``). With autotuning on, the first call of
each geometry (op, shapes, stride, padding, dilation, groups, dtype, threads, algorithm) runs the
implementations that apply to it, times them, and keeps the fastest for later calls of that
geometry in this process; the choices can be saved to a file per CPU and convx version, and
loaded by later processes.

The implementations sum the same products in different orders, so results differ between them
by rounding (float32: about 1e-6 relative; Winograd, which ``algorithm='auto'`` lets the tuner
take, about 1e-5). With autotuning off (the default) every call of a geometry takes the same
implementation on a given CPU and thread count, and results are reproducible bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from . import _core
from ._version import __version__

T = TypeVar("T")

# The first call of a geometry spends at most this many times its own duration, and at most
# _BUDGET_SECONDS, on the other implementations (issue 19's limit: a training loop repeats its
# shapes thousands of times, a one-off call should not pay more than a fraction of a second).
_CALLS_BUDGET = 20
_BUDGET_SECONDS = 0.5
# A candidate replaces the default choice only when it is at least this much faster (one timed
# run each on a possibly shared machine; a tie keeps the rules' choice).
_MIN_GAIN = 0.05
# Candidates within this factor of the best after one run each are timed again, in up to
# _RETIME_ROUNDS rounds.
_RETIME_WITHIN = 1.3
_RETIME_ROUNDS = 3
# Calls shorter than this are run once untimed before their first timed run.
_WARM_BELOW = 2e-3


@dataclass(frozen=True)
class Choice:
    """How a convolution runs: convx's GEMM level, direct mode and depthwise kernel (None: the
    process-wide setting), and whether Winograd computes it."""

    gemm: str | None = None
    direct: str | None = None
    winograd: bool = False
    depthwise: str | None = None

    @property
    def is_default(self) -> bool:
        return self.gemm is None and self.direct is None and self.depthwise is None

    def label(self) -> str:
        if self.winograd:
            return "winograd"
        if self.is_default:
            return "default"
        if self.depthwise is not None:
            return f"depthwise={self.depthwise}"
        return f"gemm={self.gemm}, direct={self.direct}"

    def to_json(self) -> list[Any]:
        return [self.gemm, self.direct, self.winograd, self.depthwise]

    @classmethod
    def from_json(cls, value: list[Any]) -> Choice:
        if not isinstance(value, list) or len(value) != 4:
            raise ValueError(f"not a convx choice: {value!r}")
        gemm, direct, winograd, depthwise = value
        if (gemm is not None and gemm not in _core.GEMM_KERNELS or direct is not None and direct not in _core.DIRECT_MODES
                or depthwise is not None and depthwise not in _core.DEPTHWISE_KERNELS):
            raise ValueError(f"not a convx choice: {value!r}")
        return cls(gemm, direct, bool(winograd), depthwise)


_DEFAULT = Choice()


class ConvCall(NamedTuple):
    """One convolution as the kernels take it (after functional/conv.py validated and cut it)."""

    op: str  # 'forward', 'input', 'weight' or 'backward' (input and weight in one pass)
    input_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    dtype: str
    threads: int
    algorithm: str
    winograd: bool  # what the rules chose for algorithm
    winograd_applies: bool
    depthwise: bool  # the depthwise kernels take it
    whole_window: bool  # one matrix product over the batch (numpy's BLAS), unless Winograd

    def key(self) -> str:
        fields = [self.op, *self.input_shape, *self.weight_shape, *self.out_hw, *self.stride, *self.pad,
                  *self.dilation, self.groups, self.dtype, self.threads, self.algorithm]
        return ",".join(map(str, fields))


@dataclass
class Entry:
    """A tuned geometry: the choice kept, and the seconds each implementation took."""

    choice: Choice
    times: dict[str, float] = field(default_factory=dict)


class _State:
    def __init__(self) -> None:
        self.enabled = False
        self.budget = _BUDGET_SECONDS
        self.cache: dict[str, Entry] = {}
        self.lock = threading.Lock()


_state = _State()


def set_autotune(enabled: bool = True, *, budget: float | None = None) -> None:
    """Turn kernel choice by measurement on or off for every later convolution call.

    Parameters
    ----------
    enabled : bool, default True
        On: the first call of each convolution geometry (op, shapes, stride, padding, dilation,
        groups, dtype, thread count, ``algorithm``) times the implementations that apply to it
        and keeps the fastest for later calls in this process (see :func:`explain`). Off (the
        default, or ``CONVX_AUTOTUNE=0``): the built-in rules choose, and a geometry always
        takes the same implementation, so results are reproducible bit for bit. Choices
        already tuned are kept either way (:func:`clear_autotune` forgets them) and used only
        while autotuning is on.
    budget : float, optional
        Seconds the first call of a geometry may spend on the other implementations (default
        0.5, and at most 20 times that call's own time): no further candidate starts once the
        next run would exceed it (a run that started is not stopped, so one slow candidate
        can overshoot it by its own time). A call slower than the budget is not tuned.

    Notes
    -----
    Implementations differ by rounding (float32: about 1e-6 relative). With
    ``algorithm='auto'`` the tuner may also choose Winograd (about 1e-5), which
    ``algorithm='direct'`` never runs. Only :func:`convx.conv2d`, its gradients
    and the layers built on them are tuned (depthwise convolutions between the phase-split
    sweeps and the row loops); a convolution whose window is the whole image has one
    implementation.

    Examples
    --------
    >>> import convx
    >>> convx.set_autotune(True)
    >>> convx.get_autotune()
    True
    >>> convx.set_autotune(False)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < float("inf"):
            raise ValueError(f"budget must be a finite number of seconds >= 0, got {budget!r}")
        _state.budget = float(budget)
    _state.enabled = enabled


def get_autotune() -> bool:
    """Whether convolutions choose their implementation by measurement (:func:`set_autotune`)."""
    return _state.enabled


def clear_autotune() -> None:
    """Forget every tuned choice of this process (a file saved by :func:`save_autotune` stays)."""
    with _state.lock:
        _state.cache.clear()


def autotune_entries() -> dict[str, dict[str, Any]]:
    """The tuned choices of this process: for each geometry key, the choice kept (``'default'``,
    ``'winograd'`` or the GEMM level and direct mode) and the seconds each implementation took."""
    with _state.lock:
        return {key: {"choice": entry.choice.label(), "times": dict(entry.times)} for key, entry in _state.cache.items()}


@functools.lru_cache(maxsize=1)
def cpu_id() -> str:
    """A name for this CPU model and the kernels convx runs on it (the cache file's key)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{model}|{platform.machine()}|{','.join(_core.supported_gemm_kernels())}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def autotune_path() -> str:
    """The file :func:`save_autotune` and :func:`load_autotune` use by default:
    ``$CONVX_CACHE_DIR``, else ``$XDG_CACHE_HOME/convx``, else ``~/.cache/convx``, then
    ``autotune-<cpu id>-<convx version>.json``."""
    directory = os.environ.get("CONVX_CACHE_DIR")
    if not directory:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(base, "convx")
    return os.path.join(directory, f"autotune-{cpu_id()}-{__version__}.json")


def save_autotune(path: str | os.PathLike[str] | None = None) -> str:
    """Write this process's tuned choices (merged over those already in the file) to ``path``
    (default :func:`autotune_path`); returns the path written."""
    target = os.fspath(path) if path is not None else autotune_path()
    entries: dict[str, Any] = {}
    if os.path.exists(target):
        entries = _read(target)
    with _state.lock:
        for key, entry in _state.cache.items():
            entries[key] = {"choice": entry.choice.to_json(), "times": entry.times}
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    document = {"convx": __version__, "cpu": cpu_id(), "entries": entries}
    temporary = f"{target}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=0, sort_keys=True)
    os.replace(temporary, target)
    return target


def _read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    if not isinstance(document, dict) or document.get("cpu") != cpu_id() or document.get("convx") != __version__:
        raise ValueError(
            f"{path} holds choices tuned for another CPU or convx version (cpu {document.get('cpu')!r}, convx "
            f"{document.get('convx')!r}; this is cpu {cpu_id()!r}, convx {__version__!r}); tune again"
        )
    entries = document.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{path} is not a convx autotune file (no 'entries')")
    return entries


def load_autotune(path: str | os.PathLike[str] | None = None) -> int:
    """Read tuned choices saved by :func:`save_autotune` into this process (they replace
    choices of the same geometries); returns how many were read. A file of another CPU or
    convx version is refused (ValueError): its choices would be another machine's."""
    source = os.fspath(path) if path is not None else autotune_path()
    loaded = {}
    for key, value in _read(source).items():
        times = value.get("times", {})
        loaded[str(key)] = Entry(Choice.from_json(value["choice"]), {str(k): float(v) for k, v in times.items()})
    with _state.lock:
        _state.cache.update(loaded)
    return len(loaded)


def _signature(call: ConvCall, choice: Choice) -> str:
    """What ``choice`` runs for ``call``: the implementations of its ops, as the kernels name them."""
    if 0 in call.out_hw:
        return "none (every window lies in the padding)"
    if choice.winograd:
        return "winograd"
    if call.whole_window:
        return "matmul (whole window)"
    n, c_in, h, w = call.input_shape
    c_out, _, kh, kw = call.weight_shape
    ops = ("input", "weight") if call.op == "backward" else (call.op,)
    if call.depthwise:
        itemsize = 4 if call.dtype == "float32" else 8
        with _core.ConvConfig(None, None, choice.depthwise):
            names = [
                "depthwise-" + _core.depthwise_implementation(
                    op, n, c_in, h, w, c_out, kh, kw, *call.out_hw, *call.stride, *call.pad, *call.dilation,
                    call.groups, itemsize)[0]
                for op in ops
            ]
        return " + ".join(names)
    with _core.ConvConfig(choice.gemm, choice.direct):
        names = [
            _core.conv_implementation(op, n, c_in, h, w, c_out, kh, kw, *call.out_hw, call.groups, *call.stride,
                                      *call.pad, *call.dilation, call.dtype == "float32", call.threads)
            for op in ops
        ]
    return " + ".join(names)


def candidates(call: ConvCall) -> dict[str, Choice]:
    """The distinct implementations ``call`` can take, each with a choice that runs it; the
    default choice (the rules') first."""
    default = Choice(winograd=call.winograd)
    found = {_signature(call, default): default}
    if 0 in call.out_hw:
        return found
    if call.algorithm == "auto" and call.winograd_applies:
        found.setdefault("winograd", Choice(winograd=True))
    if call.depthwise:
        for kernel in _core.DEPTHWISE_KERNELS[1:]:
            found.setdefault(_signature(call, Choice(depthwise=kernel)), Choice(depthwise=kernel))
    elif not call.whole_window:
        for gemm in reversed(_core.supported_gemm_kernels()):
            for direct in _core.DIRECT_MODES:
                choice = Choice(gemm, direct)
                found.setdefault(_signature(call, choice), choice)
    return found


def chosen(call: ConvCall) -> Choice | None:
    """The tuned choice for ``call`` when autotuning is on and it was tuned, else None."""
    if not _state.enabled:
        return None
    entry = _state.cache.get(call.key())
    return None if entry is None else entry.choice


def _run(choice: Choice, compute: Callable[[bool], T]) -> T:
    if choice.is_default:
        return compute(choice.winograd)
    with _core.ConvConfig(choice.gemm, choice.direct, choice.depthwise):
        return compute(choice.winograd)


def run(call: ConvCall, compute: Callable[[bool], T]) -> T:
    """``compute(winograd)`` under the implementation chosen for ``call``: the rules' (autotuning
    off, or a geometry with one implementation), the tuned one, or, on the first call of a
    geometry with autotuning on, the fastest of the candidates timed now."""
    if not _state.enabled:
        return compute(call.winograd)
    key = call.key()
    entry = _state.cache.get(key)
    if entry is not None:
        return _run(entry.choice, compute)
    default = Choice(winograd=call.winograd)
    start = time.perf_counter()
    result = compute(default.winograd)
    first = time.perf_counter() - start
    options = candidates(call)
    if len(options) == 1:
        with _state.lock:
            _state.cache[key] = Entry(default)
        return result
    default_signature = next(iter(options))
    times: dict[str, list[float]] = {default_signature: [first]}
    warm: set[str] = set()
    last = default

    def timed(signature: str, choice: Choice) -> bool:
        """Time a run of ``choice``, if the budget allows it: the time since the call began (the
        call itself, one estimate, excluded) plus this run and one kept in reserve for the
        winner's, at most the budget. One call is estimated by the fastest run so far. The
        first run of a call shorter than _WARM_BELOW, paying for new scratch pages and cold
        caches, read up to 1.6x its later ones (LeNet's 0.3 ms layers): unless it is already
        out of the running, it runs at once a second time. A run cannot be stopped, so one
        slow candidate can overshoot the budget by its own time (lenet_c1's fused backward in
        the direct tiles: 13x the default's 0.7 ms)."""
        nonlocal result, last
        for _ in range(2):
            estimate = min(min(t) for t in times.values())
            # spent beyond the call itself (one estimate), plus this run and the reserve
            if time.perf_counter() - start + estimate > min(_state.budget, _CALLS_BUDGET * estimate):
                return False
            began = time.perf_counter()
            result = _run(choice, compute)
            seconds = time.perf_counter() - began
            times.setdefault(signature, []).append(seconds)
            last = choice
            if signature in warm or estimate >= _WARM_BELOW or seconds > 2 * estimate:
                break
            warm.add(signature)
        return True

    for signature, choice in list(options.items())[1:]:
        if not timed(signature, choice):
            break
    # Then rounds over the contenders (within _RETIME_WITHIN of the best), while the budget
    # lasts; the default, which ran first and cold (its scratch's pages were new), is one of
    # them in the first round.
    for round in range(_RETIME_ROUNDS):
        best_time = min(min(t) for t in times.values())
        contenders = [s for s in times if min(times[s]) <= _RETIME_WITHIN * best_time
                      or (round == 0 and s == default_signature)]
        if len(contenders) < 2 or not all(timed(s, options[s]) for s in contenders):
            break
    fastest = {signature: min(t) for signature, t in times.items()}
    winner = min(fastest, key=fastest.__getitem__)
    if fastest[winner] > (1 - _MIN_GAIN) * fastest[default_signature]:
        winner = default_signature
    choice = options[winner]
    with _state.lock:
        _state.cache[key] = Entry(choice, fastest)
    if choice != last:
        result = _run(choice, compute)
    return result


def _load_from_environment() -> None:
    """CONVX_AUTOTUNE: '1' / 'on' turns autotuning on and loads the saved choices of this CPU
    (when a file exists); '0' / 'off' / unset leaves it off."""
    value = os.environ.get("CONVX_AUTOTUNE", "").strip().lower()
    if value in ("", "0", "off", "false", "no"):
        return
    if value not in ("1", "on", "true", "yes"):
        import warnings

        warnings.warn(f"CONVX_AUTOTUNE={value!r} is not one of 1/on/0/off; autotuning stays off", stacklevel=2)
        return
    _state.enabled = True
    path = autotune_path()
    if os.path.exists(path):
        try:
            load_autotune(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            import warnings

            warnings.warn(f"CONVX_AUTOTUNE: not loading {path}: {error}", stacklevel=2)
