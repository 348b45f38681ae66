"""``convx.explain``: which implementation a convolution runs, and what else could run it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _autotune, _core
from ._checks import as_shape
from ._typing import IntPair, Padding
from .functional.conv import _conv_call, _kernel_plan, _plan_conv, _winograd

_OPS = {
    "forward": "forward (conv2d)",
    "input": "input gradient (conv2d_backward_input)",
    "weight": "weight gradient (conv2d_backward_weight)",
    "backward": "fused backward (conv2d_backward)",
}


@dataclass(frozen=True)
class OpExplanation:
    """How one op of a convolution runs.

    Attributes
    ----------
    op : str
        'forward', 'input', 'weight' or 'backward'.
    implementation : str
        What runs: ``'level/implementation'`` of the kernels (both, joined by ``' + '``, for
        the fused backward), ``'winograd'``, ``'depthwise'`` or ``'matmul (whole window)'``.
    reason : str
        Why: the built-in rules, or the autotuner's measurement.
    alternatives : dict of str to str
        The other implementations that apply, each with the settings that run it.
    seconds : dict of str to float
        What each implementation took when the autotuner measured this geometry (empty if not).
    """

    op: str
    implementation: str
    reason: str
    alternatives: dict[str, str]
    seconds: dict[str, float]

    def __str__(self) -> str:
        lines = [f"{_OPS[self.op]}: {self.implementation}", f"    because: {self.reason}"]
        for signature, how in self.alternatives.items():
            timing = f", took {self.seconds[signature] * 1e3:.3g} ms" if signature in self.seconds else ""
            lines.append(f"    also applies: {signature} ({how}{timing})")
        return "\n".join(lines)


@dataclass(frozen=True)
class Explanation:
    """:func:`explain`'s answer: the call described, and an :class:`OpExplanation` per op."""

    description: str
    ops: dict[str, OpExplanation]

    def __str__(self) -> str:
        return "\n".join([self.description, *map(str, self.ops.values())])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def _shape_of(name: str, value: Any) -> tuple[tuple[int, ...], np.dtype[Any] | None]:
    if isinstance(value, np.ndarray):
        return tuple(value.shape), value.dtype
    return as_shape(name, value, (3, 4) if name == "x" else (4,)), None


def explain(
    x: Any, weight: Any, stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1, *,
    algorithm: str = "direct", dtype: Any = None,
) -> Explanation:
    """Which implementation each op of a convolution runs on this machine, why, and what else could.

    Nothing is computed: the answer comes from the rules (or, with :func:`convx.set_autotune`
    on, the choices measured so far) for the arguments :func:`convx.conv2d` would get.

    Parameters
    ----------
    x : ndarray or tuple of int
        The input, or its shape (N, C_in, H, W) or (C_in, H, W).
    weight : ndarray or tuple of int
        The filters, or their shape (C_out, C_in / groups, kH, kW).
    stride, padding, dilation, groups, algorithm
        As given to :func:`convx.conv2d`.
    dtype : float32 or float64, optional
        For shapes; arrays bring their own (default float32).

    Returns
    -------
    Explanation
        Printable; ``.ops['forward']``, ``['input']``, ``['weight']`` and ``['backward']``
        (the fused :func:`convx.conv2d_backward`) each say what runs and why.

    Examples
    --------
    >>> import convx
    >>> print(convx.explain((8, 64, 32, 32), (64, 64, 3, 3), padding=1))  # doctest: +ELLIPSIS
    conv2d of (8, 64, 32, 32) by (64, 64, 3, 3), ...
    forward (conv2d): ...
    """
    x_shape, x_dtype = _shape_of("x", x)
    weight_shape, weight_dtype = _shape_of("weight", weight)
    chosen = np.dtype(dtype if dtype is not None else x_dtype or weight_dtype or np.float32)
    if chosen not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {chosen}")
    if len(x_shape) == 3:
        x_shape = (1, *x_shape)
    plan = _plan_conv(x_shape, weight_shape, stride, padding, dilation, groups)
    winograd = _winograd(algorithm, weight_shape, plan, chosen.itemsize)
    kept = _kernel_plan(x_shape[2:], weight_shape[2:], plan).plan
    autotune = "on" if _autotune.get_autotune() else "off"
    description = (
        f"conv2d of {tuple(x_shape)} by {tuple(weight_shape)}, stride {plan.stride}, padding {plan.pad}, "
        f"dilation {plan.dilation}, groups {plan.groups}, {chosen.name}, algorithm {algorithm!r}, "
        f"{kept.threads(weight_shape)} thread(s), gemm {_core.gemm_kernel()!r}, direct {_core.direct_conv()!r}, "
        f"autotune {autotune}"
    )
    ops = {}
    for op in _OPS:
        call = _conv_call(op, x_shape, weight_shape, kept, chosen, algorithm, winograd)
        options = _autotune.candidates(call)
        signatures = list(options)
        entry = _autotune._state.cache.get(call.key())
        tuned = entry.choice if entry is not None and autotune == "on" else None
        if entry is not None and tuned is not None:
            runs = next((s for s, c in options.items() if c == tuned), signatures[0])
            if len(options) == 1:
                reason = "the only implementation that applies"
            elif tuned != options[signatures[0]]:
                reason = "measured fastest by the autotuner"
            else:
                reason = "the built-in rules' choice, which the autotuner measured within 5% of the fastest"
            seconds = dict(entry.times)
        else:
            runs, seconds = signatures[0], {}
            reason = "the built-in rules (the thresholds in src/convx/_conv_*.pxi)"
            if entry is not None:
                reason += "; a measured choice exists but autotuning is off"
            elif len(options) > 1 and autotune == "on":
                reason += "; the autotuner measures the alternatives on the first call"
        if runs.startswith("none"):
            reason = "every window lies in the padding: the outputs are the bias and products with zeros alone"
        elif call.depthwise and tuned is None:
            reason = "one input channel per group: the depthwise kernels' own rules (DW_DIRECT_FROM in _depthwise.pxi)"
        elif call.whole_window and runs.startswith("matmul"):
            reason = "each output is one filter dotted with one whole image: one matrix product over the batch"
        alternatives = {s: options[s].label() for s in signatures if s != runs}
        ops[op] = OpExplanation(op, runs, reason, alternatives, seconds)
    return Explanation(description, ops)
