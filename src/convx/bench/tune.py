"""``python -m convx.bench --tune``: every implementation of each convolution op of the suite,
timed interleaved, against what the built-in rules and the autotuner (its first call's own
measurement) choose, and PyTorch (timed after them) where installed."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import _autotune, _core
from .. import functional as convx_ops
from ..functional.conv import _conv_call, _kernel_plan, _plan_conv, _winograd
from .cases import ConvCase
from .implementations import torch_calls
from .runner import _time_once, _warm_up, settle

OPS = {"forward": "forward", "backward_input": "input", "backward_weight": "weight", "backward": "backward"}
# issue 19: the autotuner's choice within this factor of the fastest implementation
WITHIN = 1.05


@dataclass
class TuneResult:
    case: str
    op: str
    times: dict[str, float]  # median seconds per implementation (signature), and 'torch'
    rules: str
    tuned: str
    tuning_seconds: float  # the autotuned first call, tuning included
    call_seconds: float  # one call of the rules' choice (median)
    key: str  # the autotune cache's key of this call
    choices: dict[str, list[object]]  # each implementation's settings (Choice.to_json)

    @property
    def fastest(self) -> str:
        mine = {k: v for k, v in self.times.items() if k != "torch"}
        return min(mine, key=mine.__getitem__)

    def ratio(self, name: str) -> float:
        return self.times[name] / self.times[self.fastest]


def _public_call(case: ConvCase, op: str, arrays: dict[str, np.ndarray], algorithm: str) -> Callable[[], object]:
    x, weight, grad_out = arrays["x"], arrays["weight"], arrays["grad_out"]
    args = dict(stride=case.stride, padding=case.padding, dilation=1, groups=case.groups, algorithm=algorithm)
    return {
        "forward": lambda: convx_ops.conv2d(x, weight, None, **args),
        "backward_input": lambda: convx_ops.conv2d_backward_input(grad_out, weight, x.shape, **args),
        "backward_weight": lambda: convx_ops.conv2d_backward_weight(grad_out, x, weight.shape, **args),
        "backward": lambda: convx_ops.conv2d_backward(grad_out, x, weight, **args),
    }[op]


def _under(choice: _autotune.Choice, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with _core.ConvConfig(choice.gemm, choice.direct, choice.depthwise):
            return call()

    return run


def tune_case(case: ConvCase, ops: tuple[str, ...], repeat: int, with_torch: bool, algorithm: str = "direct",
              seed: int = 0) -> list[TuneResult]:
    """Each op of ``case``: its candidates and PyTorch timed round-robin (medians of ``repeat``
    runs), the rules' choice, and the autotuner's choice on a first call with an empty cache."""
    arrays = case.arrays(np.random.default_rng(seed))
    x, weight = arrays["x"], arrays["weight"]
    plan = _plan_conv(x.shape, weight.shape, case.stride, case.padding, 1, case.groups)
    kept = _kernel_plan(x.shape[2:], weight.shape[2:], plan).plan
    winograd = _winograd(algorithm, weight.shape, plan, x.dtype.itemsize)
    torch = torch_calls(case, arrays) if with_torch else None
    results = []
    for op in ops:
        call = _conv_call(OPS[op], x.shape, weight.shape, kept, x.dtype, algorithm, winograd)
        options = _autotune.candidates(call)
        if len(options) == 1:
            continue
        public = _public_call(case, op, arrays, algorithm)
        winograd_call = _public_call(case, op, arrays, "winograd") if "winograd" in options else None
        calls = {}
        for signature, choice in options.items():
            calls[signature] = winograd_call if choice.winograd else _under(choice, public)
        # the autotuner, as a user's first call meets it
        _autotune._state.cache.pop(call.key(), None)
        enabled = _autotune.get_autotune()
        _autotune.set_autotune(True)
        try:
            start = time.perf_counter()
            public()
            tuning = time.perf_counter() - start
        finally:
            _autotune.set_autotune(enabled)
        tuned_choice = _autotune._state.cache[call.key()].choice
        tuned = next(s for s, c in options.items() if c == tuned_choice)
        samples: dict[str, list[float]] = {}
        number = {}
        for name, fn in calls.items():
            _, samples[name], number[name] = _warm_up(fn, 20.0)
        for _ in range(repeat):
            for name, fn in calls.items():
                if len(samples[name]) < repeat:
                    samples[name].append(_time_once(fn, number[name]))
        if torch is not None:
            # PyTorch alone, after convx's: in the round-robin, whichever candidate followed it
            # ran up to 5x slower (resnet_stem's forward 45 ms, 8.4 alone; Xeon, family 6 model 167)
            settle()
            _, samples["torch"], number["torch"] = _warm_up(torch[op], 20.0)
            while len(samples["torch"]) < repeat:
                samples["torch"].append(_time_once(torch[op], number["torch"]))
            settle()
        times = {name: statistics.median(runs) for name, runs in samples.items()}
        rules = next(iter(options))
        results.append(TuneResult(case.name, op, times, rules, tuned, tuning, times[rules], call.key(),
                                  {signature: choice.to_json() for signature, choice in options.items()}))
    return results


def format_tune(results: list[TuneResult]) -> str:
    """One block per op: the rules', the autotuner's and the fastest choice, then a summary."""
    lines = []
    for r in results:
        lines.append(f"{r.case} {r.op}" + (f" (PyTorch {r.times['torch'] * 1e3:.3g} ms)" if "torch" in r.times else ""))
        for label, name in (("rules  ", r.rules), ("tuned  ", r.tuned), ("fastest", r.fastest)):
            torch = f", {r.times[name] / r.times['torch']:.2f}x PyTorch" if "torch" in r.times else ""
            lines.append(f"  {label} {name:52s} {r.times[name] * 1e3:8.3g} ms  {r.ratio(name):.2f}x fastest{torch}")
        lines.append(f"  tuning: first call {r.tuning_seconds:.3g} s = {r.tuning_seconds / r.call_seconds:.1f}x one call")
    if results:
        lines.append("")
        lines.append(summary(results))
    return "\n".join(lines)


def summary(results: list[TuneResult]) -> str:
    n = len(results)
    tuned_ok = sum(r.ratio(r.tuned) <= WITHIN for r in results)
    rules_ok = sum(r.ratio(r.rules) <= WITHIN for r in results)
    gain = math.exp(sum(math.log(r.times[r.rules] / r.times[r.tuned]) for r in results) / n)
    text = (f"autotuned choice within {100 * (WITHIN - 1):.0f}% of the fastest in {tuned_ok} of {n} ops "
            f"(the rules' choice: {rules_ok}); rules' time / tuned time, geometric mean {gain:.2f}")
    with_torch = [r for r in results if "torch" in r.times]
    if with_torch:
        geomean = math.exp(sum(math.log(r.times[r.tuned] / r.times["torch"]) for r in with_torch) / len(with_torch))
        rules = math.exp(sum(math.log(r.times[r.rules] / r.times["torch"]) for r in with_torch) / len(with_torch))
        worst = max(with_torch, key=lambda r: r.times[r.tuned] / r.times["torch"])
        text += (f"; time / PyTorch's, geometric mean: tuned {geomean:.2f}, rules {rules:.2f}; worst tuned "
                 f"{worst.case} {worst.op} {worst.times[worst.tuned] / worst.times['torch']:.2f}")
    slowest = max(results, key=lambda r: r.tuning_seconds / r.call_seconds)
    text += (f"; tuning at most {slowest.tuning_seconds / slowest.call_seconds:.1f}x one call "
             f"({slowest.case} {slowest.op}), at most {max(r.tuning_seconds for r in results):.2f} s")
    return text


def save_fastest(results: list[TuneResult]) -> str:
    """Keep each op's fastest implementation by these medians as its autotune choice (the rules'
    where it is within WITHIN of it), and save the cache (convx.save_autotune)."""
    for r in results:
        kept = r.fastest if r.ratio(r.rules) > WITHIN else r.rules
        mine = {k: v for k, v in r.times.items() if k != "torch"}
        _autotune._state.cache[r.key] = _autotune.Entry(_autotune.Choice.from_json(list(r.choices[kept])), mine)
    return _autotune.save_autotune()
