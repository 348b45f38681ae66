"""Public pooling ops: max, average and adaptive pooling with their backward passes.

Semantics follow ``torch.nn.functional`` of the same names. Every function validates its
arguments, computes the output size with ``convx._shapes``, allocates C-contiguous outputs and
calls one kernel of ``convx._core`` (per bounded sub-batch of a huge batch, and per band of rows
of a huge image, so that Ctrl-C can stop it: ``convx._batching``, ``_row_bands``). Inputs are
never modified; any memory layout is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, NoReturn, cast, overload

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .. import _batching, _core
from .._batching import sub_batches
from .._checks import (
    MAX_POOL_DTYPES, SUPPORTED_DTYPES, as_bool, as_data_layout, as_float_array, as_int, as_pair, as_padding,
    as_padding_1d, as_shape, as_single, as_triple, contiguous, plain_array,
)
from .._shapes import pool_first_empty_window, pool_output_size, pool_padding_sides
from .._threads import kernel_threads
from .._typing import AdaptiveSize, AnyArray, Float, IntPair, MaxPooled, Padding, PaddingWord, Shape
from .conv3d import as_padding3d

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
]

# The kernels take geometry as C integers; PyTorch's pooling refuses larger values too.
_MAX_PARAM = 2**31 - 1


def _batched(name: str, array: object, dtypes: tuple[np.dtype, ...] = SUPPORTED_DTYPES) -> tuple[AnyArray, bool]:
    """``array`` as a float32/float64 (or ``dtypes``) NCHW array and whether it came without the batch axis."""
    array = as_float_array(name, array, (3, 4), dtypes)
    if array.ndim == 3:
        return array[np.newaxis], True
    return array, False


def _bounded(name: str, value: object, minimum: int, dims: int = 2) -> tuple[int, ...]:
    """An ``int | (int, int)`` argument as a pair (``dims`` 2), ``int | (int,)`` as a 1-tuple (``dims`` 1), or
    ``int | (int, int, int)`` as a triple (``dims`` 3)."""
    if dims == 3:
        values: tuple[int, ...] = as_triple(name, value, minimum)
    else:
        values = as_pair(name, value, minimum) if dims == 2 else (as_single(name, value, minimum),)
    for v in values:
        if v > _MAX_PARAM:
            raise ValueError(f"{name} must be at most {_MAX_PARAM}, got {value!r}")
    return values


def _shown(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """An argument in a message as its user wrote it: an int for a 1-D op, the pair for a 2-D one."""
    return values[0] if len(values) == 1 else values


_Pair = tuple[int, int]
# Padding before and after the input along each axis (one pair for a 1-D op, two for a 2-D one).
_Sides = tuple[tuple[int, int], ...]


def _padding_spec(padding: object, dims: int) -> PaddingWord | _Sides:
    """A pooling's padding as given: a padding word, or ``dims`` (before, after) pairs."""
    if dims == 2:
        return as_padding(padding)
    if dims == 3:
        return as_padding3d(padding)
    if isinstance(padding, (tuple, list)) and len(padding) != 1:
        raise ValueError(
            f"padding of a 1-D op must be an int or a 1-tuple ((p,), or ((left, right),) per side), 'valid', "
            f"'same' or 'same_lower', got {padding!r}"
        )
    spec = as_padding_1d(padding)
    return spec if isinstance(spec, str) else (spec,)


def _window_values(
    kernel_size: object, stride: object, padding: object, dilation: object = 1, dims: int = 2,
    ceil_mode: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...], PaddingWord | _Sides, tuple[int, ...]]:
    """kernel, stride and dilation as pairs (1-tuples for ``dims`` 1, triples for 3), and the padding as given (a word,
    resolved with the input's size by :func:`_pool_output_shape`) or as (before, after) pairs, each side
    at most ``dilation * (kernel_size - 1)`` (ONNX's rule), so that no window lies wholly in the padding."""
    kernel = _bounded("kernel_size", kernel_size, 1, dims)
    stride_ = kernel if stride is None else _bounded("stride", stride, 1, dims)
    dilation_ = _bounded("dilation", dilation, 1, dims)
    spec = _padding_spec(padding, dims)
    if isinstance(spec, str):
        if ceil_mode and spec != "valid":
            raise ValueError(
                f"padding={spec!r} gives ceil(size / stride) outputs whatever the rounding: use it with "
                f"ceil_mode=False, or give the padding per side with ceil_mode=True"
            )
        return kernel, stride_, spec, dilation_
    if any(side > _MAX_PARAM for pair in spec for side in pair):
        raise ValueError(f"padding must be at most {_MAX_PARAM} on each side, got {spec!r}")
    reach = tuple(d * (k - 1) for k, d in zip(kernel, dilation_))
    if any(side > r for pair, r in zip(spec, reach) for side in pair):
        raise ValueError(
            f"padding on each side must be at most dilation * (kernel_size - 1) = {_shown(reach)} for "
            f"kernel_size={_shown(kernel)} and dilation={_shown(dilation_)} (a window must reach the input), "
            f"got padding={_shown_padding(spec)}"
        )
    return kernel, stride_, spec, dilation_


def _window_params(
    kernel_size: object, stride: object, padding: object, dilation: object = 1, ceil_mode: bool = False,
) -> tuple[_Pair, _Pair, PaddingWord | _Sides, _Pair]:
    """kernel, stride and dilation as pairs, and the padding as :func:`_window_values` gives it."""
    return cast(
        "tuple[_Pair, _Pair, PaddingWord | _Sides, _Pair]",
        _window_values(kernel_size, stride, padding, dilation, 2, ceil_mode),
    )


def _shown_padding(sides: PaddingWord | _Sides) -> object:
    """Padding in a message: as PyTorch writes it where every axis is padded alike on both sides."""
    if isinstance(sides, str) or any(before != after for before, after in sides):
        return sides
    return _shown(tuple(before for before, _ in sides))


_AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def _pool_output_shape(
    name: str, sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
    padding: PaddingWord | _Sides, dilation: tuple[int, ...], ceil_mode: bool,
) -> tuple[tuple[int, ...], _Sides]:
    """The output sizes of a window sweep over an input of spatial ``sizes`` (1-D, 2-D or 3-D), refusing
    empty results, and the padding resolved to (before, after) pairs."""
    sides = pool_padding_sides(padding, sizes, kernel, stride, dilation)
    out = tuple(
        pool_output_size(size, k, s, before, d, ceil_mode, after)
        for size, k, s, (before, after), d in zip(sizes, kernel, stride, sides, dilation)
    )
    geometry = (
        f"kernel_size={_shown(kernel)}, stride={_shown(stride)}, padding={_shown_padding(padding)}, "
        f"dilation={_shown(dilation)}"
    )
    if min(out) < 1:
        sized = f"a {'x'.join(map(str, sizes))} input" if len(sizes) >= 2 else f"an input of length {sizes[0]}"
        raise ValueError(
            f"the pooling output of {name} would be {'x'.join(map(str, out))} for {sized} with {geometry}; "
            f"the input (plus padding) must hold at least one dilated kernel"
        )
    for k, (axis, size, out_size) in enumerate(zip(_AXES[len(sizes)], sizes, out)):
        empty = pool_first_empty_window(size, kernel[k], stride[k], sides[k][0], dilation[k], out_size)
        if empty is not None:
            raise ValueError(
                f"with kernel_size={_shown(kernel)}, padding={_shown_padding(padding)} and "
                f"dilation={_shown(dilation)}, window {empty} along the {axis} of {name} ({size}) has every tap "
                f"in the padding; reduce the dilation or padding"
            )
    return out, sides


def _adaptive_output_size(output_size: AdaptiveSize, height: int, width: int) -> tuple[int, ...]:
    """``int | (int | None, int | None)`` as a pair of positive ints, None keeping the input size."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"output_size must be an int or a pair of ints (or None), got a sequence of length "
                f"{len(output_size)}: {output_size!r}"
            )
        sizes = (height, width)
        return tuple(
            sizes[k] if v is None else as_int(f"output_size[{k}]", v, 1) for k, v in enumerate(output_size)
        )
    if isinstance(output_size, np.ndarray):
        raise TypeError("output_size must be an int or a tuple of two ints (or None), got an ndarray")
    size = as_int("output_size", output_size, 1)
    return size, size


def _nonempty_plane(name: str, height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(
            f"{name} must have a non-empty plane for adaptive pooling, got height {height} and width {width}"
        )


def _input_shape(input_shape: Shape, grad_out: AnyArray, dims: int = 2) -> tuple[tuple[int, ...], bool]:
    """``input_shape`` as NCHW (and whether it was CHW), checked against grad_out's leading axes; with
    ``dims`` 1, as NCL (whether it was CL)."""
    shape = as_shape("input_shape", input_shape, (dims + 1, dims + 2))
    if grad_out.ndim != len(shape):
        raise ValueError(
            f"grad_out must be {len(shape)}-dimensional like input_shape {shape}, "
            f"got an array of shape {grad_out.shape}"
        )
    if grad_out.shape[:-dims] != shape[:-dims]:
        raise ValueError(
            f"grad_out of shape {grad_out.shape} does not match input_shape {shape}: the leading "
            f"(batch and channel) axes must be {shape[:-dims]}"
        )
    if len(shape) == dims + 1:
        return (1, *shape), True
    return shape, False


# No process on x86-64 or AArch64 Linux addresses more than 2**47 bytes (128 TiB): a larger array
# is refused without asking the allocator (which AddressSanitizer reports, and which overcommit
# may grant lazily for sizes that can never be touched).
_ADDRESSABLE_BYTES = 2**47


def _allocate(shape: tuple[int, ...], dtype: DTypeLike, cause: str) -> AnyArray:
    """``np.empty(shape, dtype)``, refused naming ``cause`` (the argument that sized it) where NumPy
    cannot allocate it: its own errors ("array is too big", a bare MemoryError) name no argument."""
    nbytes = math.prod(int(size) for size in shape) * np.dtype(dtype).itemsize
    if nbytes > _ADDRESSABLE_BYTES:
        raise MemoryError(
            f"{cause} asks for an array of shape {tuple(shape)} and dtype {np.dtype(dtype)}: {nbytes / 2**40:.3g} TiB, "
            f"more than a process can address"
        )
    try:
        return np.empty(shape, dtype=dtype)
    except (ValueError, MemoryError) as error:
        # NumPy raises a MemoryError subclass whose constructor takes other arguments.
        raise (MemoryError if isinstance(error, MemoryError) else ValueError)(
            f"{cause} asks for an array of shape {tuple(shape)} and dtype {np.dtype(dtype)}, too large to "
            f"allocate ({error})"
        ) from None


def _unbatch(array: AnyArray, unbatched: bool) -> AnyArray:
    return array[0] if unbatched else array


# Units of work one tap of a max-pool window costs: the phase sweeps keep a running maximum and
# its offset per output in memory, one pass per tap outside the few literal geometries. A 31x31
# window over 4x32x32 images ran at ~11 units per tap-visit (a sub-batch of 2^28 units per
# thread took 330 ms, against the ~30 ms sub-batches are for), 3x3 stride 2 at ~4.
MAX_TAP_WORK = 8


def _work(channels: int, plane: int, outputs: int, taps: int) -> int:
    """Elements one image reads and writes, with each output's taps: the size of a sub-batch's work.

    (Adaptive windows overlap: an input element lies in at most four, a window has at most
    four elements where the output is larger than the input, hence their 4s.)
    """
    return channels * (plane + outputs * taps)


# Units of work per tap of an average-pool window (forward), or per share an input element
# gathers (backward: as many in all). The general kernels, one 4096x4096 float32 plane, Xeon
# family 6 model 167, 1 thread, kernel 31 / 63, stride 1: forward ~43 / ~55 ms, backward ~72 /
# ~61 ms per 2^28 taps, where a sub-batch's 2^28 units are meant to take about 30 ms.
AVG_TAP_WORK = 2


# Units of work per element of the separable max pool's passes (the input plane, the row pass's
# winners, the output): about 4.6 ns, where MAX_TAP_WORK's 8 units are ~1.2 ns (Xeon family 6
# model 167, 1 thread: 8x32x56x56 float32, k5 s1 p2 separable 10.8 ms for 3 passes of 803k
# elements; phase split 26 ms for 25 taps of 803k outputs).
SEPARABLE_WORK = 32

# The phase-split max pool sweeps every tap over every output; the separable one makes three
# passes (plane, rows x output columns, output) whatever the window. Taps times outputs over
# separable elements at the crossover, Xeon family 6 model 167 (AVX-512), 1 thread, float32
# 8x32x56x56, medians of 21 interleaved, phase / separable ms (ratio): k3 s1 1.6 / 11.2 (3.0,
# literal), k4 s2 4.6 / 8.7 (2.4), k5 s3 4.3 / 7.7 (2.0), k5 s2 8.4 / 8.7 (3.6), k7 s3 6.7 / 7.4
# (3.9), k9 s4 5.4 / 6.8 (3.9), k6 s2 9.8 / 8.7 (5.4), k4 s1 14.3 / 11.3 (5.4), k7 s2 13.9 / 8.2
# (7.0): the phase split wins below about 4.
PHASE_TAP_RATIO = 4

# Scratch elements per thread the phase split may take beyond a plane and its output (its band
# budget, CONVX_POOL_BAND_BUDGET in _pool.h, and slack), so that its memory never grows with
# stride, padding or dilation.
PHASE_SCRATCH_SLACK = 1 << 16


# Taps a window of int8 or uint8 may have for the direct kernel (CONVX_POOL_DIRECT_TAPS of _pool.h).
DIRECT_TAPS = 256


def _phase_scratch(
    width: int, out_h: int, out_w: int, kernel: tuple[int, int], stride: tuple[int, int], padding: int,
    dilation: tuple[int, int],
) -> int:
    """Scratch elements per thread of the phase-split kernel: convx_max_pool_phases and
    convx_max_pool_scratch of _pool.h, in Python's unbounded integers (the C ones could overflow
    for the geometries this is to rule out)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    row_reach = (kh - 1) * dh // sh
    cols = max(out_w + (kw - 1) * dw // sw, (padding + width + sw - 1) // sw)
    band = min(max((1 << 15) // (sh * sw * cols) - row_reach, 1), out_h)
    lanes = -(-band * cols // 16) * 16
    return sh * sw * ((band + row_reach) * cols + 16) + cols + 2 * lanes + 32


def _max_pool_separable(
    dtype: np.dtype, height: int, width: int, out_h: int, out_w: int, kernel: tuple[int, int],
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
) -> bool:
    """Whether max pooling runs the separable kernel (else the phase-split one): the one place that decides.

    The phase split costs kernel_h * kernel_w per output, lays the padded plane out in its
    stride phases (scratch that grows with strides larger than the kernel) and tracks window
    offsets in the floating-point type, exact below 2^24 (float32) or 2^31 (float64); the
    separable kernel costs three passes of a few steps per element (by blocks, or by deque where
    dilated), whatever the window, in scratch of about a plane. int8 and uint8 have a direct
    kernel in the phase split's place (a sweep per tap, windows of up to 256 taps).
    """
    (kh, kw), (dh, dw) = kernel, dilation
    plane, outputs = height * width, out_h * out_w
    cheap = kh * kw * outputs <= PHASE_TAP_RATIO * (plane + height * out_w + outputs)
    if dtype.kind != "f":
        # int8 and uint8 take a direct kernel in place of the phase split: a sweep per tap too, the
        # winning tap numbered in a byte (CONVX_POOL_DIRECT_TAPS of _pool.h), scratch of one output row.
        return not (cheap and kh * kw <= DIRECT_TAPS)
    exact = dh * (kh - 1) * width + dw * (kw - 1) < (2**24 if dtype == np.float32 else 2**31)
    return not (
        exact and cheap
        and _phase_scratch(width, out_h, out_w, kernel, stride, padding[1], dilation)
        <= plane + outputs + PHASE_SCRATCH_SLACK
    )


def _band_edges(rows: int, bands: int) -> Iterator[tuple[int, int]]:
    """The rows ``[begin, end)`` of each of ``bands`` bands of ``rows`` rows, as equal as whole rows allow."""
    for band in range(bands):
        yield band * rows // bands, (band + 1) * rows // bands


def _row_bands(work_per_image: int, planes: int, rows_read: int, rows_written: int, reach: int) -> int:
    """Bands of rows to split each image into (one kernel call each), so that Ctrl-C is seen
    between calls (some tens of milliseconds each) even in a single huge plane; whole images go in
    sub-batches, as everywhere. Band ``b`` of ``bands`` writes the rows
    ``[b * rows_written // bands, (b + 1) * rows_written // bands)`` of each of the image's
    ``planes`` planes: output rows of a forward pass, input-gradient rows of a backward one.

    An image is banded only when it alone fills a sub-batch, whose threads then share its
    ``planes`` planes: no more threads than planes do a band's work.

    ``reach``: the rows of the source (``rows_read`` of them) that a band processes beyond its own
    share, and its neighbour processes too (for max pooling's passes over the input, the dilated
    kernel's height less one; none where each band's work is its own rows' alone). Bands are never
    so many that this repeated work covers the source more than twice in all. (So a max-pooled
    plane under a window about as tall as itself goes in one call, however large.)
    """
    if work_per_image <= _batching.SUB_BATCH_WORK:  # every ordinary layer: no more to decide
        return 1
    limit = _batching.SUB_BATCH_WORK * max(1, min(kernel_threads(), planes))
    bands = min(rows_written, -(-work_per_image // limit))
    if reach > 0:
        bands = min(bands, max(1, rows_read // reach))
    return bands


@overload
def max_pool2d(
    x: NDArray[MaxPooled], kernel_size: IntPair, stride: IntPair | None = ..., padding: Padding = ...,
    dilation: IntPair = ..., ceil_mode: bool = ..., return_indices: Literal[False] = ..., *, layout: str = ...,
) -> NDArray[MaxPooled]: ...
@overload
def max_pool2d(
    x: NDArray[MaxPooled], kernel_size: IntPair, stride: IntPair | None = ..., padding: Padding = ...,
    dilation: IntPair = ..., ceil_mode: bool = ..., *, return_indices: Literal[True], layout: str = ...,
) -> tuple[NDArray[MaxPooled], NDArray[np.int64]]: ...
def max_pool2d(
    x: NDArray[MaxPooled], kernel_size: IntPair, stride: IntPair | None = None, padding: Padding = 0,
    dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False, *, layout: str = "NCHW",
) -> NDArray[MaxPooled] | tuple[NDArray[MaxPooled], NDArray[np.int64]]:
    """2-D max pooling over the planes of ``x``, as ``torch.nn.functional.max_pool2d``.

    ``y[n, c, oh, ow]`` is the maximum of ``x[n, c, oh*sh - top + i*dh, ow*sw - left + j*dw]`` over
    the taps ``0 <= i < kh``, ``0 <= j < kw`` that fall inside the input (padding counts as -inf).
    NaN propagates: a window holding NaN gives NaN (and points at its last NaN); otherwise the
    first maximum in row-major window order wins ties. Time and scratch memory grow with the
    input and output sizes only, not with the window, stride, padding or dilation. int8 and
    uint8 inputs are pooled exactly in their own type (padding never wins: a window's maximum is
    over its taps inside the input).

    Parameters
    ----------
    x : ndarray of float32, float64, int8 or uint8, shape (N, C, H, W) or (C, H, W)
        Input, any memory layout; not modified.
    kernel_size : int or (int, int)
        Window size ``(kh, kw)``, positive.
    stride : int or (int, int), optional
        Window step ``(sh, sw)``, positive; defaults to ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit -inf padding: ``p`` on every side, ``(ph, pw)`` on both sides of each axis, or
        ``((top, bottom), (left, right))``; each side at most ``dilation * (kernel_size - 1)`` (ONNX's
        limit; PyTorch's is half the kernel), so that every window reaches the input. ``'valid'``
        pads nothing; ``'same'`` (ONNX's SAME_UPPER, TensorFlow's 'SAME') pads each axis so that
        ``out = ceil(size / stride)``, any odd extra row or column at the bottom or right, and
        ``'same_lower'`` puts it at the top or left; neither takes ``ceil_mode``. A flat 4-tuple is
        refused as ambiguous.
    dilation : int or (int, int), default 1
        Spacing between the taps of a window, positive.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window (unless it would start in the
        right padding).
    return_indices : bool, default False
        Also return the position of every maximum.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last, ``(N, H, W, C)`` or ``(H, W, C)``. NHWC runs natively (no transposes),
        but for windows large against the image: parts of the batch (2**20 elements at most)
        are pooled channels first by the kernel whose time does not grow with the window.

    Returns
    -------
    y : ndarray, shape (N, C, out_h, out_w) or (C, out_h, out_w); (N, out_h, out_w, C) or (out_h, out_w, C) for NHWC
        Same dtype as ``x``; ``out_h = (H + top + bottom - dh(kh - 1) - 1) // sh + 1`` (see
        ``ceil_mode``), likewise ``out_w``.
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``: the flat position ``h * W + w`` of each maximum within its
        (unpadded) plane, the format of ``max_unpool2d`` and of :func:`max_pool2d_backward` (the
        same values in either layout).

    Raises
    ------
    TypeError
        For a dtype other than float32, float64, int8 or uint8, or non-int geometry or non-bool flags.
    ValueError
        For a wrong ndim, non-positive sizes, a side's padding over ``dilation * (kernel_size - 1)``,
        a flat 4-tuple or unknown word as padding, ``'same'`` with ``ceil_mode``, or an empty output.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import max_pool2d
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> max_pool2d(x, 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    >>> y, indices = max_pool2d(x, 3, stride=1, padding=1, return_indices=True)
    >>> indices[0, 0]
    array([[ 5,  6,  7,  7],
           [ 9, 10, 11, 11],
           [13, 14, 15, 15],
           [13, 14, 15, 15]])
    >>> max_pool2d(x, 3, stride=2, padding="same")[0, 0]
    array([[10., 11.],
           [14., 15.]], dtype=float32)
    >>> max_pool2d(np.array([[[0, 255], [7, 255]]], dtype=np.uint8), 2, return_indices=True)
    (array([[[255]]], dtype=uint8), array([[[1]]]))
    >>> x_last = np.moveaxis(x, 1, -1)  # (1, 4, 4, 1), channels last
    >>> max_pool2d(x_last, 2, layout="NHWC")[0, ..., 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    if as_data_layout(layout):
        return _nhwc.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)  # type: ignore[no-any-return]
    x, unbatched = _batched("x", x, MAX_POOL_DTYPES)
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride, spec, dilation = _window_params(kernel_size, stride, padding, dilation, ceil_mode)
    return_indices = as_bool("return_indices", return_indices)
    n, c, height, width = x.shape
    (out_h, out_w), sides = _pool_output_shape("x", (height, width), kernel, stride, spec, dilation, ceil_mode)
    # The kernels take the padding before each axis; the output size says how far the windows go.
    padding = (sides[0][0], sides[1][0])

    cause = "kernel_size, stride, padding, dilation and ceil_mode"
    y = _allocate((n, c, out_h, out_w), x.dtype, cause)
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0), np.int64, cause)
    if y.size:
        x = contiguous(x)
        separable = _max_pool_separable(x.dtype, height, width, out_h, out_w, kernel, stride, padding, dilation)
        if separable and width > _MAX_PARAM:
            # The separable kernel keeps each row's winning columns as int32.
            raise ValueError(f"x must have at most {_MAX_PARAM} columns for this max pooling, got width {width}")
        if separable:
            work = SEPARABLE_WORK * c * (height * width + height * out_w + out_h * out_w)
        else:
            work = _work(c, height * width, out_h * out_w, MAX_TAP_WORK * kernel[0] * kernel[1])
        bands = _row_bands(work, c, height, out_h, (kernel[0] - 1) * dilation[0])
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out_h, bands):
                _core.max_pool2d_forward(x[part], y[part], indices[part], *kernel, *stride, *padding, *dilation,
                                         separable, begin, end, kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)


def max_pool2d_backward(
    grad_out: NDArray[Float], indices: NDArray[np.int64], input_shape: Shape, *, layout: str = "NCHW"
) -> NDArray[Float]:
    """Gradient of :func:`max_pool2d` (and :func:`adaptive_max_pool2d`) with respect to its input.

    Every ``grad_out[n, c, oh, ow]`` is added to ``grad_x[n, c]`` at the flat position
    ``indices[n, c, oh, ow]``; overlapping windows that share a maximum accumulate.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, out_h, out_w) or (C, out_h, out_w)
        Gradient of the loss with respect to the pooled output.
    indices : ndarray of int64, same shape as ``grad_out``
        The indices returned by the forward pass: flat ``h * W + w`` positions, each in
        ``[0, H * W)``.
    input_shape : tuple of int
        ``(N, C, H, W)`` or ``(C, H, W)``, the shape of the forward input.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: with ``'NHWC'``, ``grad_out`` and ``indices`` are ``(N, out_h, out_w, C)``
        or ``(out_h, out_w, C)``, ``input_shape`` and ``grad_x`` ``(N, H, W, C)`` or ``(H, W, C)``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 (``grad_out``) or int64 (``indices``).
    ValueError
        For mismatched shapes or an index outside its plane.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import max_pool2d, max_pool2d_backward
    >>> x = np.array([[[1., 2.], [4., 3.]]])
    >>> y, indices = max_pool2d(x, 2, return_indices=True)
    >>> max_pool2d_backward(np.ones_like(y), indices, x.shape)
    array([[[0., 0.],
            [1., 0.]]])
    """
    if as_data_layout(layout):
        return _nhwc.max_pool2d_backward(grad_out, indices, input_shape)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    indices = _as_indices(indices, grad_out)
    shape, unbatched = _input_shape(input_shape, grad_out)
    return _scatter_maxima(grad_out, indices, shape, unbatched, input_shape)


def _as_indices(indices: object, grad_out: AnyArray) -> NDArray[np.int64]:
    """Max pooling's ``indices``: an int64 ndarray of ``grad_out``'s shape (its values are checked as read)."""
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray of int64, got {type(indices).__name__}")
    indices = plain_array(indices)
    if indices.dtype != np.int64:
        raise TypeError(f"indices must have dtype int64, got dtype {indices.dtype}; cast it explicitly first")
    if indices.shape != grad_out.shape:
        raise ValueError(f"indices must have the shape of grad_out {grad_out.shape}, got {indices.shape}")
    return indices


def _scatter_maxima(
    grad_out: AnyArray, indices: NDArray[np.int64], shape: Shape, unbatched: bool, input_shape: Shape,
    plane: str = "H*W",
) -> AnyArray:
    """grad_x of ``shape`` (NCHW) with each grad_out added at its index; ``input_shape`` and ``plane``
    (what the indices count: ``H*W``, or ``L`` for 1-D pooling) name the user's shape in a refusal."""
    plane_size = shape[2] * shape[3]
    grad_x = np.empty(shape, dtype=grad_out.dtype)
    if grad_x.size:
        grad_out4 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        indices4 = contiguous(indices[np.newaxis] if unbatched else indices)
        for part in sub_batches(shape[0], _work(shape[1], plane_size, grad_out4.shape[2] * grad_out4.shape[3], 1)):
            # Indices become write addresses: the kernel reads each once, checks it and writes
            # where that read said, and stops a plane at the first outside [0, H*W). They are not
            # copied: another thread rewriting them can change the result, never the memory written.
            if _core.max_pool2d_backward(grad_out4[part], indices4[part], grad_x[part],
                                         kernel_threads(elements=grad_x[part].size)):
                _refuse_indices(indices, plane_size, input_shape, plane)
    elif indices.size:  # an empty input plane, where no index is valid
        _refuse_indices(indices, plane_size, input_shape, plane)
    return _unbatch(grad_x, unbatched)


def _refuse_indices(indices: NDArray[np.int64], plane_size: int, input_shape: Shape, plane: str = "H*W") -> NoReturn:
    lowest, highest = int(indices.min()), int(indices.max())
    bad = lowest if lowest < 0 else highest
    if 0 <= bad < plane_size:  # the kernel read a value that another thread has since replaced
        got = "a value outside it while they were being read (were they modified concurrently?)"
    else:
        got = str(bad)
    raise ValueError(
        f"indices must lie in [0, {plane}) = [0, {plane_size}) for input_shape {tuple(input_shape)}, got {got}"
    )


def _avg_args(
    kernel_size: object, stride: object, padding: object, dilation: object, ceil_mode: bool, count_include_pad: bool,
    divisor_override: int | None,
) -> tuple[_Pair, _Pair, PaddingWord | _Sides, _Pair, bool, bool, int]:
    return cast("tuple[_Pair, _Pair, PaddingWord | _Sides, _Pair, bool, bool, int]", _avg_values(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, divisor_override, 2
    ))


def _avg_values(
    kernel_size: object, stride: object, padding: object, dilation: object, ceil_mode: bool,
    count_include_pad: bool, divisor_override: int | None, dims: int,
) -> tuple[tuple[int, ...], tuple[int, ...], PaddingWord | _Sides, tuple[int, ...], bool, bool, int]:
    """avg pooling's arguments validated: kernel, stride and dilation as pairs (1-tuples for ``dims``
    1), the padding as :func:`_window_values` gives it, the flags, and the divisor (0: none given)."""
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, spec, dilation_ = _window_values(kernel_size, stride, padding, dilation, dims, ceil_mode)
    count_include_pad = as_bool("count_include_pad", count_include_pad)
    if divisor_override is None:
        divisor = 0
    else:
        divisor = as_int("divisor_override", divisor_override, 1)
        if divisor > _MAX_PARAM:
            raise ValueError(f"divisor_override must be at most {_MAX_PARAM}, got {divisor}")
    return kernel, stride_, spec, dilation_, ceil_mode, count_include_pad, divisor


def avg_pool2d(
    x: NDArray[Float], kernel_size: IntPair, stride: IntPair | None = None, padding: Padding = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    dilation: IntPair = 1, *, layout: str = "NCHW",
) -> NDArray[Float]:
    """2-D average pooling over the planes of ``x``, as ``torch.nn.functional.avg_pool2d``.

    ``y[n, c, oh, ow]`` is the sum of ``x[n, c, oh*sh - top + i*dh, ow*sw - left + j*dw]`` over the
    taps inside the input, divided by ``divisor_override`` if given, else by the number of the
    window's taps inside the zero-padded input (``count_include_pad``; a ``ceil_mode`` window
    hanging past the padding is clipped to it, as PyTorch and ONNX) or inside the input.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, H, W) or (C, H, W)
        Input, any memory layout; not modified.
    kernel_size : int or (int, int)
        Window size ``(kh, kw)``, positive.
    stride : int or (int, int), optional
        Window step ``(sh, sw)``, positive; defaults to ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit zero padding, spelled and limited as in :func:`max_pool2d`: each side at most
        ``dilation * (kernel_size - 1)``.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    count_include_pad : bool, default True
        Count the padding in the divisor.
    divisor_override : int, optional
        A positive divisor used for every window instead.
    dilation : int or (int, int), default 1
        Spacing ``(dh, dw)`` between the taps of a window, positive (ONNX's AveragePool
        ``dilations``; PyTorch has none).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last, ``(N, H, W, C)`` or ``(H, W, C)``. NHWC runs natively (no transposes).

    Returns
    -------
    y : ndarray, shape (N, C, out_h, out_w) or (C, out_h, out_w); (N, out_h, out_w, C) or (out_h, out_w, C) for NHWC
        Same dtype as ``x``; ``out_h = (H + top + bottom - dh(kh - 1) - 1) // sh + 1`` (see
        ``ceil_mode``), likewise ``out_w``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For a wrong ndim, non-positive sizes, a side's padding over ``dilation * (kernel_size - 1)``,
        a flat 4-tuple or unknown word as padding, ``'same'`` with ``ceil_mode``, or an empty output.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import avg_pool2d
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    >>> avg_pool2d(x, 2)
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    >>> avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    array([[[[ 2.5,  4. ],
             [ 8.5, 10. ]]]])
    >>> avg_pool2d(x, 2, padding=((0, 1), (0, 1)), dilation=2, count_include_pad=False)
    array([[[[ 5.,  6.],
             [ 9., 10.]]]])
    >>> avg_pool2d(np.moveaxis(x, 1, -1), 2, layout="NHWC")[0, ..., 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    if as_data_layout(layout):
        return _nhwc.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                                dilation)
    x, unbatched = _batched("x", x)
    kernel, stride, spec, dilation, ceil_mode, count_include_pad, divisor = _avg_args(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, divisor_override
    )
    n, c, height, width = x.shape
    (out_h, out_w), ((top, bottom), (left, right)) = _pool_output_shape(
        "x", (height, width), kernel, stride, spec, dilation, ceil_mode
    )

    y = _allocate((n, c, out_h, out_w), x.dtype, "kernel_size, stride, padding, dilation and ceil_mode")
    if y.size:
        x = contiguous(x)
        work = _work(c, height * width, out_h * out_w, AVG_TAP_WORK * kernel[0] * kernel[1])
        # Each output row is summed on its own, so bands repeat no work (reach 0).
        bands = _row_bands(work, c, height, out_h, 0)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out_h, bands):
                _core.avg_pool2d_forward(x[part], y[part], *kernel, *stride, top, left, bottom, right, *dilation,
                                         count_include_pad, divisor, begin, end, kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def avg_pool2d_backward(
    grad_out: NDArray[Float],
    input_shape: Shape,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: Padding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    dilation: IntPair = 1,
    *,
    layout: str = "NCHW",
) -> NDArray[Float]:
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Each ``grad_out[n, c, oh, ow]``, divided by its window's divisor, is added to every input
    element of that window (padding excluded).

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, out_h, out_w) or (C, out_h, out_w)
        Gradient of the loss with respect to the pooled output; its shape must be the forward
        output shape for these arguments.
    input_shape : tuple of int
        ``(N, C, H, W)`` or ``(C, H, W)``, the shape of the forward input.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation
        As in :func:`avg_pool2d`.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: with ``'NHWC'``, ``grad_out`` is ``(N, out_h, out_w, C)`` or
        ``(out_h, out_w, C)``, ``input_shape`` and ``grad_x`` ``(N, H, W, C)`` or ``(H, W, C)``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For invalid arguments (as :func:`avg_pool2d`) or a ``grad_out`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import avg_pool2d_backward
    >>> avg_pool2d_backward(np.ones((1, 1, 2, 2)), (1, 1, 4, 4), 2)[0, 0]
    array([[0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25]])
    """
    if as_data_layout(layout):
        return _nhwc.avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode,
                                         count_include_pad, divisor_override, dilation)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    shape, unbatched = _input_shape(input_shape, grad_out)
    kernel, stride, spec, dilation, ceil_mode, count_include_pad, divisor = _avg_args(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, divisor_override
    )
    (out_h, out_w), ((top, bottom), (left, right)) = _pool_output_shape(
        "input_shape", shape[2:], kernel, stride, spec, dilation, ceil_mode
    )
    if grad_out.shape[-2:] != (out_h, out_w):
        raise ValueError(
            f"grad_out must have the forward output shape {(*grad_out.shape[:-2], out_h, out_w)} for "
            f"input_shape {tuple(input_shape)} and these pooling arguments, got {grad_out.shape}"
        )

    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out4 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        height = shape[2]
        work = _work(shape[1], height * shape[3], out_h * out_w, AVG_TAP_WORK * kernel[0] * kernel[1])
        # Bands of input rows, each row gathering from the windows over it as in one call. A band
        # repeats only the division of the grad_out rows its first row shares with the band
        # before, (kernel_h - 1) // stride_h rows at most: less than one input row's gathering
        # from them, so no cap on the bands for it (reach 0).
        bands = _row_bands(work, shape[1], out_h, height, 0)
        for part in sub_batches(shape[0], work):
            for begin, end in _band_edges(height, bands):
                _core.avg_pool2d_backward(grad_out4[part], grad_x[part], *kernel, *stride, top, left, bottom, right,
                                          *dilation, count_include_pad, divisor, begin, end,
                                          kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


def adaptive_avg_pool2d(x: NDArray[Float], output_size: AdaptiveSize, *, layout: str = "NCHW") -> NDArray[Float]:
    """2-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output ``(oh, ow)`` averages rows ``[floor(oh*H/out_h), ceil((oh+1)*H/out_h))`` and columns
    ``[floor(ow*W/out_w), ceil((ow+1)*W/out_w))``; ``output_size=1`` is global average pooling.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, H, W) or (C, H, W)
        Input with ``H, W >= 1``, any memory layout; not modified.
    output_size : int or (int or None, int or None)
        ``(out_h, out_w)``, positive; None keeps that input dimension.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last, ``(N, H, W, C)`` or ``(H, W, C)``. NHWC runs natively (no transposes).

    Returns
    -------
    y : ndarray, shape (N, C, out_h, out_w) or (C, out_h, out_w); (N, out_h, out_w, C) or (out_h, out_w, C) for NHWC
        Same dtype as ``x``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 or a non-int ``output_size``.
    ValueError
        For a wrong ndim, an empty plane or a non-positive ``output_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_avg_pool2d
    >>> x = np.arange(15, dtype=np.float64).reshape(1, 3, 5)
    >>> adaptive_avg_pool2d(x, (1, 2))
    array([[[6., 8.]]])
    >>> adaptive_avg_pool2d(x, 1)
    array([[[7.]]])
    >>> adaptive_avg_pool2d(np.moveaxis(x, 0, -1), 1, layout="NHWC")  # (3, 5, 1) -> (1, 1, 1)
    array([[[7.]]])
    """
    if as_data_layout(layout):
        return _nhwc.adaptive_avg_pool2d(x, output_size)
    x, unbatched = _batched("x", x)
    n, c, height, width = x.shape
    _nonempty_plane("x", height, width)
    out_h, out_w = _adaptive_output_size(output_size, height, width)

    y = _allocate((n, c, out_h, out_w), x.dtype, "output_size")
    if y.size:
        x = contiguous(x)
        for part in sub_batches(n, _work(c, 4 * height * width, out_h * out_w, 4)):
            _core.adaptive_avg_pool2d_forward(x[part], y[part], kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def adaptive_avg_pool2d_backward(
    grad_out: NDArray[Float], input_shape: Shape, *, layout: str = "NCHW"
) -> NDArray[Float]:
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input.

    The output size is read from ``grad_out``'s last two axes; each ``grad_out[n, c, oh, ow]``,
    divided by its window's size, is added to every input element of that window.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, out_h, out_w) or (C, out_h, out_w)
        Gradient of the loss with respect to the pooled output, ``out_h, out_w >= 1``.
    input_shape : tuple of int
        ``(N, C, H, W)`` or ``(C, H, W)``, the shape of the forward input, ``H, W >= 1``.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: with ``'NHWC'``, ``grad_out`` is ``(N, out_h, out_w, C)`` or
        ``(out_h, out_w, C)``, ``input_shape`` and ``grad_x`` ``(N, H, W, C)`` or ``(H, W, C)``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64.
    ValueError
        For mismatched shapes or empty planes.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_avg_pool2d_backward
    >>> adaptive_avg_pool2d_backward(np.ones((1, 1, 2)), (1, 2, 4))
    array([[[0.25, 0.25, 0.25, 0.25],
            [0.25, 0.25, 0.25, 0.25]]])
    """
    if as_data_layout(layout):
        return _nhwc.adaptive_avg_pool2d_backward(grad_out, input_shape)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    shape, unbatched = _input_shape(input_shape, grad_out)
    _nonempty_plane("input_shape", shape[2], shape[3])
    out_h, out_w = grad_out.shape[-2:]
    if out_h < 1 or out_w < 1:
        raise ValueError(f"grad_out must have a non-empty output plane, got shape {grad_out.shape}")

    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out4 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        for part in sub_batches(shape[0], _work(shape[1], 4 * shape[2] * shape[3], out_h * out_w, 4)):
            _core.adaptive_avg_pool2d_backward(grad_out4[part], grad_x[part],
                                               kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


@overload
def adaptive_max_pool2d(
    x: NDArray[MaxPooled], output_size: AdaptiveSize, return_indices: Literal[False] = ..., *, layout: str = ...
) -> NDArray[MaxPooled]: ...
@overload
def adaptive_max_pool2d(
    x: NDArray[MaxPooled], output_size: AdaptiveSize, return_indices: Literal[True], *, layout: str = ...
) -> tuple[NDArray[MaxPooled], NDArray[np.int64]]: ...
def adaptive_max_pool2d(
    x: NDArray[MaxPooled], output_size: AdaptiveSize, return_indices: bool = False, *, layout: str = "NCHW"
) -> NDArray[MaxPooled] | tuple[NDArray[MaxPooled], NDArray[np.int64]]:
    """2-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool2d``.

    Output ``(oh, ow)`` is the maximum over rows ``[floor(oh*H/out_h), ceil((oh+1)*H/out_h))`` and
    columns ``[floor(ow*W/out_w), ceil((ow+1)*W/out_w))``, with :func:`max_pool2d`'s rules for
    ties and NaN (and its dtypes: int8 and uint8 exactly).

    Parameters
    ----------
    x : ndarray of float32, float64, int8 or uint8, shape (N, C, H, W) or (C, H, W)
        Input with ``H, W >= 1``, any memory layout; not modified.
    output_size : int or (int or None, int or None)
        ``(out_h, out_w)``, positive; None keeps that input dimension.
    return_indices : bool, default False
        Also return the position of every maximum.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last, ``(N, H, W, C)`` or ``(H, W, C)``. NHWC runs natively (no transposes).

    Returns
    -------
    y : ndarray, shape (N, C, out_h, out_w) or (C, out_h, out_w); (N, out_h, out_w, C) or (out_h, out_w, C) for NHWC
        Same dtype as ``x``.
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``: flat ``h * W + w`` positions within each plane, as
        :func:`max_pool2d_backward` takes them.

    Raises
    ------
    TypeError
        For a dtype other than float32, float64, int8 or uint8, a non-int ``output_size`` or a
        non-bool flag.
    ValueError
        For a wrong ndim, an empty plane or a non-positive ``output_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_max_pool2d
    >>> x = np.array([[[1., 5., 2.], [4., 3., 6.]]])
    >>> y, indices = adaptive_max_pool2d(x, (1, 2), return_indices=True)
    >>> y
    array([[[5., 6.]]])
    >>> indices
    array([[[1, 5]]])
    """
    if as_data_layout(layout):
        return _nhwc.adaptive_max_pool2d(x, output_size, return_indices)  # type: ignore[no-any-return]
    x, unbatched = _batched("x", x, MAX_POOL_DTYPES)
    n, c, height, width = x.shape
    _nonempty_plane("x", height, width)
    out_h, out_w = _adaptive_output_size(output_size, height, width)
    return_indices = as_bool("return_indices", return_indices)

    y = _allocate((n, c, out_h, out_w), x.dtype, "output_size")
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0), np.int64, "output_size")
    if y.size:
        x = contiguous(x)
        for part in sub_batches(n, _work(c, 4 * height * width, out_h * out_w, 4)):
            _core.adaptive_max_pool2d_forward(x[part], y[part], indices[part], kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)


# The channels-last side, which reuses the helpers above (so imported once they are defined).
from . import _pooling_nhwc as _nhwc  # noqa: E402
