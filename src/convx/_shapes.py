"""The one place for output-size, padding and window arithmetic.

Every public op computes its output shape here, so that the kernels, the reference
implementation and the layer classes agree on a single formula for each quantity.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    """Output length of a convolution along one axis.

    ``floor((size + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride) + 1``;
    may be zero or negative when the dilated kernel is larger than the padded input (the
    callers turn that into an error).
    """
    span = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - span) // stride + 1


def conv_reading_outputs(
    size: int, kernel: int, stride: int, pad_before: int, dilation: int, out_size: int
) -> tuple[int, int]:
    """``[first, stop)``: the outputs along one axis that a convolution's kernels need compute.

    The outputs before ``first`` have every tap of their window in the leading padding
    (``o*stride - pad_before + dilation*(kernel - 1) < 0``), those from ``stop`` on in the
    trailing padding (``o*stride - pad_before >= size``): they read zeros only, whatever the
    stride, padding and dilation, so the kernels are given the outputs between, with
    ``pad_before - first*stride`` as their leading padding. ``first`` stops short of a window
    that would start inside the input, so that padding is never negative (at most one
    all-padding output is kept there). ``first < stop`` where ``out_size`` is the convolution's own
    output count: output ``pad_before // stride`` starts at most at the input's first element. Where
    it is fewer (conv_transpose2d's x, whose output_padding gives the convolution of its output more
    outputs than x has) the range may be empty, ``first == stop``: no output reads the input.
    """
    reach = dilation * (kernel - 1)
    first = 0
    if pad_before > reach:
        first = min(-(-(pad_before - reach) // stride), pad_before // stride)
    stop = min(out_size, (size - 1 + pad_before) // stride + 1)
    return first, max(first, stop)


def padding_sides(
    padding: str | tuple[tuple[int, int], tuple[int, int]], sizes: tuple[int, ...], kernel: tuple[int, int],
    stride: tuple[int, int], dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of a convolution's padding, checked by ``_checks.as_padding``.

    ``'same'`` (ONNX's SAME_UPPER, TensorFlow's 'SAME') pads each axis so that the output has
    ``ceil(size / stride)`` elements, the extra element of an odd total after (bottom/right);
    at stride 1 that is PyTorch's ``'same'``. ``'same_lower'`` puts the extra element before.
    """
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return (0, 0), (0, 0)
    sides = []
    for size, k, s, d in zip(sizes, kernel, stride, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        small, large = total // 2, total - total // 2
        sides.append((small, large) if padding == "same" else (large, small))
    return sides[0], sides[1]


def conv_transpose_output_size(
    size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int,
    pad_after: int | None = None,
) -> int:
    """Output length of a transposed convolution along one axis.

    ``(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``, or with
    ``pad_after``, ``padding + pad_after`` in place of ``2 * padding``.
    """
    after = padding if pad_after is None else pad_after
    return (size - 1) * stride - padding - after + dilation * (kernel - 1) + output_padding + 1


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool, pad_after: int | None = None
) -> int:
    """Output length of a max/avg pooling window sweep along one axis (PyTorch's rule).

    ``padding`` is the padding before the input, ``pad_after`` the padding after it (``padding``
    when None). With ``ceil_mode`` a last, partial window is kept, unless it would start beyond
    the input and its leading padding.
    """
    span = dilation * (kernel - 1) + 1
    after = padding if pad_after is None else pad_after
    numerator = size + padding + after - span + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_padding_sides(
    padding: str | tuple[tuple[int, int], ...], sizes: tuple[int, ...], kernel: tuple[int, ...],
    stride: tuple[int, ...], dilation: tuple[int, ...],
) -> tuple[tuple[int, int], ...]:
    """(before, after) padding of each axis of a pooling (1-D or 2-D), checked by ``_checks``.

    ``'same'`` and ``'same_lower'`` as :func:`padding_sides` (output ``ceil(size / stride)``), and
    ``'valid'`` no padding.
    """
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return tuple((0, 0) for _ in sizes)
    sides = []
    for size, k, s, d in zip(sizes, kernel, stride, dilation):
        total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        small, large = total // 2, total - total // 2
        sides.append((small, large) if padding == "same" else (large, small))
    return tuple(sides)


def adaptive_window(index: int, in_size: int, out_size: int) -> tuple[int, int]:
    """Half-open input range ``[floor(i*In/Out), ceil((i+1)*In/Out))`` of adaptive output ``index``."""
    start = (index * in_size) // out_size
    end = -((-(index + 1) * in_size) // out_size)
    return start, end


def pool_first_empty_window(
    size: int, kernel: int, stride: int, padding: int, dilation: int, out_size: int
) -> int | None:
    """The first output index whose dilated window has no tap inside ``[0, size)``, or None.

    Every window starts before ``size`` (the output-size rule sees to that), so only windows
    starting in the left padding can miss the input: their taps may step over it when the
    dilation exceeds the input size.
    """
    for index in range(min(out_size, -(-padding // stride))):
        start = index * stride - padding
        first_tap = -(start // dilation)  # ceil(-start / dilation) for start < 0
        if first_tap >= kernel or start + first_tap * dilation >= size:
            return index
    return None


#: ``numpy.pad``'s names for PyTorch's padding modes (the same copying rule).
NumpyPadMode = Literal["reflect", "edge", "wrap"]
NUMPY_PAD_MODES: dict[str, NumpyPadMode] = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def padded_source(positions: np.ndarray, size: int, mode: NumpyPadMode) -> np.ndarray:
    """The input element (0..size-1) that each position of a ``numpy.pad``-ed axis copies, the positions
    counted from the input's first element (negative in the leading padding)."""
    result: np.ndarray
    if mode == "edge":
        result = np.clip(positions, 0, size - 1)
    elif mode == "wrap":
        result = positions % size
    elif size == 1:
        result = np.zeros_like(positions)
    else:
        folded = positions % (2 * (size - 1))  # 'reflect': period 2 * (size - 1), the edges not repeated
        result = np.where(folded < size, folded, 2 * (size - 1) - folded)
    return result


def counting_run(table: np.ndarray) -> tuple[int, int]:
    """``[begin, end)``: the longest stretch of non-negative entries of ``table`` that count up by one
    (``table[j] = table[begin] + j - begin``), which a gather copies as one block; ``(0, 0)`` if none."""
    if len(table) == 0:
        return 0, 0
    steps = np.flatnonzero(~((table[1:] == table[:-1] + 1) & (table[:-1] >= 0)))
    # Runs end after each position in steps (and at the end of the table).
    ends = np.concatenate([steps + 1, [len(table)]])
    begins = np.concatenate([[0], steps + 1])
    lengths = ends - begins
    lengths[table[begins] < 0] = 0
    best = int(np.argmax(lengths))
    return (int(begins[best]), int(ends[best])) if lengths[best] > 0 else (0, 0)
