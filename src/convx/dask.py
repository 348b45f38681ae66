"""convx on Dask: batch inference, convolution of images larger than memory, data-parallel training.

``import convx.dask`` needs the ``dask`` extra (``dask[array]`` and ``distributed``):
``pip install "convx-nn[dask]"``. Nothing here changes how convx itself computes: every chunk or
tile runs the same convx kernels as an in-memory call would.

- :func:`predict` maps a model (or any function of a batch) over a dask array chunked along the
  batch, lazily;
- :func:`conv2d` and :func:`predict_tiled` convolve images chunked in height and width, each tile
  with the halo its outputs need (``map_overlap``-style, zero padding at the image border only),
  and equal the in-memory result;
- :func:`train_step` computes the gradients of a batch's shards on the workers of a
  ``distributed`` cluster and applies one optimizer step on the driver.

Threads: inside a Dask worker every task of this module runs convx on the worker's thread budget,
the ``OMP_NUM_THREADS`` Dask gives its worker processes (1 unless configured through
``distributed.nanny.pre-spawn-environ``), or 1 in a worker without it: Dask's own threads run the
tasks side by side, so cores x threads never oversubscribe the machine.
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

try:
    import dask.array as da
    from dask.delayed import delayed
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "convx.dask needs Dask: pip install 'convx-nn[dask]' (dask[array] and distributed)"
    ) from exc

from . import _threads
from ._checks import SUPPORTED_DTYPES, as_float_array, as_int, as_padding, as_pair
from ._shapes import conv_output_size, padding_sides, pool_output_size
from .functional import conv2d as _conv2d
from .nn.activations import PReLU, _Activation
from .nn.blocks import Identity
from .nn.containers import Sequential
from .nn.conv import Conv2d
from .nn.dropout import Dropout
from .nn.losses import CrossEntropyLoss
from .nn.module import Module, no_grad
from .nn.normalization import BatchNorm2d
from .nn.pooling import AvgPool2d, MaxPool2d

__all__ = ["conv2d", "predict", "predict_tiled", "train_step", "worker_threads"]


# ---------------------------------------------------------------------------------------------
# Threads, and the objects every task of a graph shares


def worker_threads() -> int | None:
    """The thread count convx runs on in this Dask worker, or None outside one.

    A worker process started by Dask's nanny has ``OMP_NUM_THREADS`` in its environment (1 by
    default, whatever ``threads_per_worker`` is: Dask runs that many tasks side by side); that
    count, or 1 where it is not set (a worker thread of the client's own process). The tasks of
    :mod:`convx.dask` set it with :func:`convx.set_num_threads` before they compute: a worker forked
    from a process whose convx count was higher (the ``fork`` start method) would otherwise run
    every task on that many threads. (Workers that are threads of the client's process,
    ``LocalCluster(processes=False)``, set the client's own count so.)
    """
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is part of the extra
        return None
    try:
        get_worker()
    except ValueError:
        return None
    try:
        count = int(os.environ.get("OMP_NUM_THREADS", "1"))
    except ValueError:
        count = 1
    return min(max(count, 1), _threads.MAX_THREADS)


def _hold_worker_threads() -> None:
    count = worker_threads()
    if count is not None and _threads.get_num_threads() != count:
        _threads.set_num_threads(count)


# A model shared by the tasks of one worker is copied once per thread that runs it: a layer's
# forward may keep state on the layer, and two threads of a worker must not share that.
_thread_copies = threading.local()


def _own_copy(obj: Any) -> Any:
    if not isinstance(obj, Module):
        return obj
    copies = getattr(_thread_copies, "copies", None)
    if copies is None:
        copies = _thread_copies.copies = weakref.WeakKeyDictionary()
    mine = copies.get(obj)
    if mine is None:
        mine = copies[obj] = copy.deepcopy(obj)
    return mine


def _share(obj: Any) -> Any:
    """``obj`` as one key of a graph that every task reads, never pickled per task: a
    ``distributed`` scheduler computes it on one worker and copies it to the others that need it
    (once each); a graph built so computes on any scheduler."""
    return delayed(obj, pure=False, traverse=False)


def _as_dask(name: str, x: object) -> Any:
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__}; wrap an in-memory array with "
            f"dask.array.from_array({name}, chunks=...)"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must hold float32 or float64, got dtype {x.dtype}")
    if any(np.isnan(size) for size in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes {x.chunks}; call {name}.compute_chunk_sizes() first")
    return x


def _prepared(model: object) -> Callable[[np.ndarray], Any]:
    """A model as the tasks run it: a copy in evaluation mode (the caller's model is left as it
    is), or a function as given."""
    if isinstance(model, Module):
        return copy.deepcopy(model).eval()
    if not callable(model):
        raise TypeError(f"model must be a convx.nn Module or a callable, got {type(model).__name__}")
    return model


# ---------------------------------------------------------------------------------------------
# Batch inference


def _predict_block(block: np.ndarray, model: Callable[[np.ndarray], Any], image_shape: tuple[int, ...],
                   dtype: np.dtype[Any]) -> np.ndarray:
    _hold_worker_threads()
    if block.shape[0] == 0:
        return np.empty((0, *image_shape), dtype=dtype)
    run = _own_copy(model)
    with no_grad():
        out = np.asarray(run(block))
    expected = (block.shape[0], *image_shape)
    if out.shape != expected or out.dtype != dtype:
        raise RuntimeError(
            f"the model returned {out.shape} {out.dtype} for a chunk of {block.shape[0]} images, where the "
            f"one-image sample (or meta) promised {expected} {dtype}"
        )
    return out


def predict(model: object, x: object, *, batch_chunks: int | Sequence[int] | None = None,
            meta: np.ndarray | None = None) -> Any:
    """Map a convx model (or any function of a batch) over a dask array chunked along the batch.

    Each chunk of ``x`` (a batch of whole images) becomes one task computing ``model(chunk)``
    under :class:`convx.nn.no_grad`. The result is lazy: nothing runs until it is computed or
    stored (``.compute()``, ``.to_zarr(...)``).

    Parameters
    ----------
    model : convx.nn.Module or callable
        A module is copied and put in evaluation mode (the one passed is not changed); a callable
        (``functools.partial(convx.conv2d, weight=w)``) is used as given. It travels to the workers
        once: it is one key of the graph that every task reads (on a ``distributed`` cluster,
        computed on one worker and copied once to each other worker that runs a task).
    x : dask.array.Array, shape (N, ...)
        float32 or float64, chunked along axis 0 only (every other axis in one chunk).
    batch_chunks : int or tuple of int, optional
        Rechunk axis 0 to this first (``x.rechunk({0: batch_chunks})``).
    meta : ndarray, optional
        The output for one image, shape (1, ...): its shape and dtype. Without it the model is run
        once on the driver on one image of zeros to find them.

    Returns
    -------
    y : dask.array.Array, shape (N, ...)
        Chunked along axis 0 as ``x``; each chunk equals ``model`` applied to that chunk in memory.

    Notes
    -----
    Results equal the in-memory call on each chunk exactly (the same kernels run on the same
    chunk). A model whose output for an image depends on the other images of its batch (BatchNorm
    in training mode) is not one for chunked inference: modules run in evaluation mode here.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da
    >>> import convx.dask
    >>> from convx import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.ReLU(), nn.GlobalAvgPool2d())
    >>> images = da.ones((10, 3, 8, 8), dtype=np.float32, chunks=(4, 3, 8, 8))
    >>> y = convx.dask.predict(model, images)
    >>> y.shape, y.chunks
    ((10, 4), ((4, 4, 2), (4,)))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     np.array_equal(y.compute(), model.eval()(np.ones((10, 3, 8, 8), np.float32)))
    True
    """
    array = _as_dask("x", x)
    if array.ndim < 1:
        raise ValueError("x must have a batch axis, got a 0-d array")
    if batch_chunks is not None:
        array = array.rechunk({0: batch_chunks})
    for axis in range(1, array.ndim):
        if len(array.chunks[axis]) > 1:
            raise ValueError(
                f"x is chunked along axis {axis} (chunks {array.chunks[axis]}); predict maps the model over whole "
                f"images, chunked along the batch (axis 0) only: x.rechunk({{{axis}: -1}}) first, or use "
                "predict_tiled for images chunked in height and width"
            )
    run = _prepared(model)
    if meta is None:
        with no_grad():
            sample = np.asarray(run(np.zeros((1, *array.shape[1:]), dtype=array.dtype)))
    else:
        sample = np.asarray(meta)
        if sample.ndim < 1 or sample.shape[0] != 1:
            raise ValueError(f"meta must be the output for one image, shape (1, ...), got shape {sample.shape}")
    if sample.ndim < 1 or sample.shape[0] != 1:
        raise ValueError(f"the model's output for one image must have shape (1, ...), got {sample.shape}")
    image_shape, dtype = tuple(sample.shape[1:]), sample.dtype
    shared = _share(run)
    x_index = tuple(range(array.ndim))
    new_axes = {array.ndim + i: size for i, size in enumerate(image_shape)}
    out_index = (0, *new_axes)
    return da.blockwise(
        _predict_block, out_index, array, x_index, shared, None, image_shape, None, dtype, None,
        new_axes=new_axes, concatenate=True, dtype=dtype, meta=np.empty((0,) * len(out_index), dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# Tiles with halos
#
# A chain of layers (convolution or pooling windows; element-wise layers in between) maps output
# o, along one axis, to the input positions [o*S - P, o*S - P + R) with, composed layer by layer,
#   S = s_1 s_2 ... (total stride), P = sum_l p_l S_{l-1} (leading padding, in input positions),
#   R = 1 + sum_l (k_l - 1) d_l S_{l-1} (receptive field).
# A tile whose first position t0 is a multiple of S is, for every layer, aligned to the whole
# image's grid (its output j is the whole's output j + t0/S_l); an output whose input field lies
# inside the tile gets from the tile exactly the terms it has in the whole (the zeros each layer
# pads at the tile's edges only reach outputs whose field crosses them), and at the image's true
# borders the tile pads as the whole does. So with chunk boundaries a_i at multiples of S, chunk i
# gives the outputs [a_i / S, a_{i+1} / S) (the last to the end), read from the tile
# [a_i - left, a_{i+1} + right) with left = P rounded up to a multiple of S, right = R - S - P.


class _Window(NamedTuple):
    """One sliding window along one axis: a convolution or pooling layer."""

    kernel: int
    stride: int
    dilation: int
    pad_before: int
    pad_after: int
    ceil_mode: bool

    def output_size(self, size: int) -> int:
        if self.ceil_mode:  # pooling only
            return pool_output_size(size, self.kernel, self.stride, self.pad_before, self.dilation, True,
                                    self.pad_after)
        return conv_output_size(size, self.kernel, self.stride, self.pad_before, self.pad_after, self.dilation)


def _pool_pads(layer: MaxPool2d | AvgPool2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """A pooling layer's (before, after) padding of each axis: a tile cannot know the whole input's
    size, which 'same' padding depends on."""
    padding = layer.padding
    if padding == "valid":
        return (0, 0), (0, 0)
    if isinstance(padding, str):
        raise ValueError(
            f"predict_tiled needs pooling padding in numbers: {layer!r} pads {padding!r}, which depends on the "
            f"whole input's size; give the padding per side, ((top, bottom), (left, right))"
        )
    if isinstance(padding[0], tuple):
        return padding[0], padding[1]
    return (padding[0], padding[0]), (padding[1], padding[1])


class _AxisPlan(NamedTuple):
    """How one spatial axis is tiled: the halo taken from each neighbour, the chunk boundaries of
    the input and of the output (``len(chunks) + 1`` each), and the total stride."""

    left: int
    right: int
    in_bounds: tuple[int, ...]
    out_bounds: tuple[int, ...]
    stride: int

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(np.diff(self.in_bounds).tolist())

    def crop(self, index: int) -> slice:
        """The outputs of chunk ``index`` within its tile's output."""
        tile_start = self.in_bounds[index] - self.left if index > 0 else 0
        first = self.out_bounds[index] - tile_start // self.stride
        return slice(first, first + self.out_bounds[index + 1] - self.out_bounds[index])


def _plan_axis(name: str, x_name: str, size: int, chunks: tuple[int, ...], windows: list[_Window],
               what: str) -> _AxisPlan:
    stride, lead, field = 1, 0, 1
    out_size = size
    for window in windows:
        lead += window.pad_before * stride
        field += (window.kernel - 1) * window.dilation * stride
        stride *= window.stride
        out_size = window.output_size(out_size) if out_size >= 1 else out_size
    if out_size < 1:
        raise ValueError(f"{what} has no output along {name}: {x_name} has {size} positions there, fewer than its "
                         f"receptive field ({field}) with its padding")
    left = -(-lead // stride) * stride
    right = max(0, field - stride - lead)
    in_bounds = tuple(int(b) for b in np.cumsum((0, *chunks)))
    inner = in_bounds[1:-1]
    misaligned = [b for b in inner if b % stride]
    if misaligned:
        raise ValueError(
            f"the chunk boundaries of {x_name} along {name} ({list(inner)}) must be multiples of {what}'s total "
            f"stride {stride} (got {misaligned[:3]}): rechunk {x_name} to chunks that are multiples of {stride}"
        )
    # Dask takes a halo from a neighbouring chunk only, so a chunk smaller than the halo (a short
    # last chunk) joins its smaller neighbour: fewer boundaries, all still aligned.
    halo = max(left, right)
    sizes = list(chunks)
    while len(sizes) > 1 and min(sizes) < halo:
        i = sizes.index(min(sizes))
        j = i - 1 if i == len(sizes) - 1 or (i > 0 and sizes[i - 1] <= sizes[i + 1]) else i + 1
        sizes[min(i, j)] += sizes[max(i, j)]
        del sizes[max(i, j)]
    in_bounds = tuple(int(b) for b in np.cumsum((0, *sizes)))
    # Chunks past the last output (a short last chunk of a strided net) get none: empty chunks.
    out_bounds = (0, *(min(b // stride, out_size) for b in in_bounds[1:-1]), out_size)
    return _AxisPlan(left, right, in_bounds, out_bounds, stride)


def _tile_block(tile: np.ndarray, run: Callable[[np.ndarray], Any], plans: tuple[_AxisPlan, _AxisPlan],
                channels: int, dtype: np.dtype[Any], block_id: tuple[int, ...] | None = None) -> np.ndarray:
    _hold_worker_threads()
    assert block_id is not None
    rows, cols = plans[0].crop(block_id[-2]), plans[1].crop(block_id[-1])
    if tile.ndim == 3:
        single: np.ndarray = _tile_block(tile[np.newaxis], run, plans, channels, dtype, (0, *block_id))[0]
        return single
    if 0 in (tile.shape[0], rows.stop - rows.start, cols.stop - cols.start):
        return np.empty((tile.shape[0], channels, rows.stop - rows.start, cols.stop - cols.start), dtype=dtype)
    model = _own_copy(run)
    with no_grad():
        out = np.asarray(model(np.ascontiguousarray(tile)))
    return np.ascontiguousarray(out[..., rows, cols])


def _tiled(x: Any, run: Callable[[np.ndarray], Any], windows_h: list[_Window], windows_w: list[_Window],
           channels: int, dtype: np.dtype[Any], what: str) -> Any:
    if len(x.chunks[-3]) > 1:
        raise ValueError(
            f"x is chunked along its channel axis (axis {x.ndim - 3}, chunks {x.chunks[-3]}); tiles need every "
            f"channel: x.rechunk({{{x.ndim - 3}: -1}}) first"
        )
    plans = (_plan_axis("height", "x", x.shape[-2], x.chunks[-2], windows_h, what),
             _plan_axis("width", "x", x.shape[-1], x.chunks[-1], windows_w, what))
    x = x.rechunk({x.ndim - 2: plans[0].chunks, x.ndim - 1: plans[1].chunks})
    depth: dict[int, tuple[int, int]] = {axis: (0, 0) for axis in range(x.ndim)}
    for axis, plan in zip((x.ndim - 2, x.ndim - 1), plans):
        if len(x.chunks[axis]) > 1:
            depth[axis] = (plan.left, plan.right)
    tiles = da.overlap.overlap(x, depth=depth, boundary="none", allow_rechunk=False)
    out_chunks = (*x.chunks[:-3], (channels,), *(tuple(np.diff(plan.out_bounds).tolist()) for plan in plans))
    return tiles.map_blocks(
        _tile_block, _share(run), plans, channels, dtype,
        chunks=out_chunks, dtype=dtype, meta=np.empty((0,) * x.ndim, dtype=dtype),
    )


def _spatial_4d(x: Any) -> None:
    if x.ndim not in (3, 4):
        raise ValueError(f"x must have shape (N, C, H, W) or (C, H, W), got {x.ndim} dimensions {x.shape}")


class _Conv2dTile:
    """convx.conv2d with fixed filters, picklable: what each tile task calls."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                 padding: Any, dilation: tuple[int, int], groups: int, algorithm: str) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.algorithm = algorithm

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        return _conv2d(tile, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                       algorithm=self.algorithm)


def _conv_pads(padding: object, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int]) -> tuple[Any, list[tuple[int, int]]]:
    """``padding`` checked (``_checks.as_padding``) and its (before, after) per axis; 'same' and
    'same_lower' at stride 1 only (at other strides the sides depend on the whole image's size)."""
    checked = as_padding(padding)
    if isinstance(checked, str) and checked != "valid" and stride != (1, 1):
        raise ValueError(f"padding={checked!r} needs stride 1 here, got stride={stride}; give the sides explicitly")
    top_bottom, left_right = padding_sides(checked, (1, 1), kernel, stride, dilation)
    return checked, [top_bottom, left_right]


def conv2d(x: object, weight: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1, *, algorithm: str = "direct") -> Any:
    """:func:`convx.conv2d` of images chunked in height and width, tile by tile with halos.

    Each chunk of ``x`` is convolved together with the rows and columns of its neighbours that its
    outputs read (the halo, from the kernel, dilation, stride and padding), and the tile's result is
    cropped to the chunk's outputs. Zero padding is applied at the image's borders only, so the
    result equals ``convx.conv2d`` of the whole array in memory (bitwise where the kernel chosen
    for a tile is the one chosen for the whole, else within float rounding).

    Parameters
    ----------
    x : dask.array.Array, shape (N, C_in, H, W) or (C_in, H, W)
        float32 or float64, chunked along N, H and W (all channels in one chunk). With stride > 1
        every chunk boundary along H (W) must be a multiple of the stride. A chunk smaller than the
        halo (a short last chunk) is merged into its smaller neighbour first.
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
        In memory, same dtype as ``x``; sent to the workers once.
    bias, stride, padding, dilation, groups, algorithm
        As for :func:`convx.conv2d`.

    Returns
    -------
    y : dask.array.Array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Lazy; chunk ``i`` along H holds the outputs ``[a_i / stride, a_{i+1} / stride)`` of the
        input chunk ``[a_i, a_{i+1})`` (the last one to the end; a short last chunk past the last
        output gives an empty chunk).

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da
    >>> import convx, convx.dask
    >>> image = np.random.default_rng(0).standard_normal((1, 2, 50, 37)).astype(np.float32)
    >>> weight = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32)
    >>> y = convx.dask.conv2d(da.from_array(image, chunks=(1, 2, 16, 16)), weight, padding=1)
    >>> y.chunks[2:]
    ((16, 16, 16, 2), (16, 16, 5))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     np.allclose(y.compute(), convx.conv2d(image, weight, padding=1), rtol=1e-6, atol=1e-6)
    True
    """
    array = _as_dask("x", x)
    _spatial_4d(array)
    weight = as_float_array("weight", weight, (4,))
    if weight.dtype != array.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x {array.dtype}; both must be the same")
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
        if bias.shape != (weight.shape[0],) or bias.dtype != array.dtype:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) and dtype {array.dtype}, got {bias.shape} {bias.dtype}")
    stride_pair = as_pair("stride", stride, 1)
    dilation_pair = as_pair("dilation", dilation, 1)
    groups = as_int("groups", groups, 1)
    if array.shape[-3] != weight.shape[1] * groups:
        raise ValueError(
            f"x has {array.shape[-3]} channels but weight {weight.shape} with groups={groups} expects "
            f"{weight.shape[1] * groups}"
        )
    if weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the {weight.shape[0]} output channels of weight")
    kernel = (weight.shape[2], weight.shape[3])
    padding_norm, pads = _conv_pads(padding, kernel, stride_pair, dilation_pair)
    windows = [_Window(kernel[axis], stride_pair[axis], dilation_pair[axis], *pads[axis], False) for axis in (0, 1)]
    run = _Conv2dTile(np.ascontiguousarray(weight), None if bias is None else np.ascontiguousarray(bias),
                      stride_pair, padding_norm, dilation_pair, groups, algorithm)
    return _tiled(array, run, [windows[0]], [windows[1]], weight.shape[0], array.dtype, "the convolution")


# Layers that act on each position alone (in evaluation mode): they add nothing to the halo.
_POINTWISE = (_Activation, PReLU, BatchNorm2d, Dropout, Identity)


def _layer_windows(model: Module) -> list[tuple[_Window, _Window]]:
    """The sliding windows of a fully convolutional net, in order (height, width)."""
    layers = list(model) if isinstance(model, Sequential) else [model]
    windows: list[tuple[_Window, _Window]] = []
    for layer in layers:
        if isinstance(layer, Sequential):
            windows.extend(_layer_windows(layer))
        elif isinstance(layer, _POINTWISE):
            continue
        elif type(layer) is Conv2d:
            if layer.padding_mode != "zeros":
                raise ValueError(
                    f"predict_tiled needs zero padding; {layer!r} pads with padding_mode={layer.padding_mode!r}, "
                    "which reads the image's far side or its edge"
                )
            pads = layer._pads(None)
            windows.append(tuple(  # type: ignore[arg-type]
                _Window(layer.kernel_size[a], layer.stride[a], layer.dilation[a], *pads[a], False) for a in (0, 1)
            ))
        elif type(layer) is MaxPool2d or type(layer) is AvgPool2d:
            pool_pads = _pool_pads(layer)
            windows.append(tuple(  # type: ignore[arg-type]
                _Window(layer.kernel_size[a], layer.stride[a], layer.dilation[a], *pool_pads[a], layer.ceil_mode)
                for a in (0, 1)
            ))
        else:
            raise TypeError(
                f"predict_tiled runs fully convolutional nets: Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d, "
                f"element-wise activations, Dropout and Identity in (nested) Sequentials; got {layer!r}"
            )
    return windows


def predict_tiled(model: Module, x: object) -> Any:
    """Run a fully convolutional net over images chunked in height and width, tile by tile.

    The halo and the stride alignment come from the net's layers (kernel, dilation, stride and
    padding of every convolution and pooling layer); each tile runs the whole net on its chunk and
    halo, and is cropped to the chunk's outputs. The result equals ``model(x)`` on the whole array
    in memory (in evaluation mode): bitwise where the kernels chosen for a tile are those chosen for
    the whole, else within float rounding.

    Parameters
    ----------
    model : convx.nn.Module
        A :class:`~convx.nn.Sequential` (nested ones too) of Conv2d (zero padding), MaxPool2d,
        AvgPool2d, BatchNorm2d, element-wise activations, Dropout and Identity, or one such layer.
        A copy in evaluation mode runs; it travels to the workers once.
    x : dask.array.Array, shape (N, C, H, W) or (C, H, W)
        float32 or float64, chunked along N, H and W (all channels in one chunk). Chunk boundaries
        along H (W) must be multiples of the net's total stride along H (W) (the product of its
        layers' strides). A chunk smaller than the halo is merged into its smaller neighbour first.

    Returns
    -------
    y : dask.array.Array
        Lazy, the shape of ``model(x)``; chunk ``i`` along H holds the outputs
        ``[a_i / S, a_{i+1} / S)`` of input chunk ``[a_i, a_{i+1})`` (the last to the end).

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da
    >>> import convx.dask
    >>> from convx import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Conv2d(4, 1, 3, padding=1, rng=1)).eval()
    >>> image = np.random.default_rng(0).standard_normal((1, 1, 64, 60)).astype(np.float32)
    >>> y = convx.dask.predict_tiled(net, da.from_array(image, chunks=(1, 1, 16, 20)))
    >>> y.shape, y.chunks[2:]
    ((1, 1, 32, 30), ((8, 8, 8, 8), (10, 10, 10)))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     np.allclose(y.compute(), net(image), rtol=1e-6, atol=1e-6)
    True
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convx.nn Module, got {type(model).__name__}")
    array = _as_dask("x", x)
    _spatial_4d(array)
    run = _prepared(model)
    assert isinstance(run, Module)
    windows = _layer_windows(run)
    windows_h, windows_w = [w[0] for w in windows], [w[1] for w in windows]
    # The output's channels and dtype, from one image no larger than the receptive field.
    fields = []
    for axis_windows, size in ((windows_h, array.shape[-2]), (windows_w, array.shape[-1])):
        field, stride = 1, 1
        for window in axis_windows:
            field += (window.kernel - 1) * window.dilation * stride
            stride *= window.stride
        fields.append(min(size, field))
    with no_grad():
        sample = np.asarray(run(np.zeros((1, array.shape[-3], *fields), dtype=array.dtype)))
    return _tiled(array, run, windows_h, windows_w, sample.shape[1], sample.dtype, "the net")


# ---------------------------------------------------------------------------------------------
# Data-parallel training


def _mean_divisor(loss_fn: Any, prediction: np.ndarray) -> float:
    """What a mean-reduced loss divided its sum by in its latest forward."""
    if isinstance(loss_fn, CrossEntropyLoss):
        return float(loss_fn._cache[3])  # type: ignore[index]  # summed weights of the kept targets
    return float(prediction.size)


def _shard_gradients(model: Module, loss_fn: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """One shard's forward and backward on a worker: loss, divisor, gradients, buffers."""
    _hold_worker_threads()
    model, loss_fn = copy.deepcopy(model), copy.deepcopy(loss_fn)
    prediction = model(x)
    loss = float(loss_fn(prediction, y))
    divisor = _mean_divisor(loss_fn, prediction) if loss_fn.reduction == "mean" else 1.0
    model.backward(loss_fn.backward())
    return {
        "loss": loss,
        "divisor": divisor,
        "samples": len(x),
        "grads": {name: param.grad for name, param in model.named_parameters()},
        "buffers": dict(model.named_buffers()),
    }


def train_step(client: Any, model: Module, loss_fn: Any, optimizer: Any, x_shards: Sequence[Any],
               y_shards: Sequence[Any]) -> float:
    """One data-parallel training step: gradients of the shards on the workers, one update here.

    The model (its weights, as they are now) is scattered once to every worker; each shard's task
    computes ``loss_fn(model(x), y)`` and its backward with convx on a copy; the driver sums the
    shards' gradients (weighted by each shard's share of the mean for ``reduction='mean'``: its
    sample count, or for :class:`~convx.nn.CrossEntropyLoss` its summed target weights), stores them
    in ``model`` and runs ``optimizer.step()`` once. The next call sends the updated weights.

    Parameters
    ----------
    client : distributed.Client
    model : convx.nn.Module
        Trained in place (its mode, training or evaluation, is used on the workers as it is).
    loss_fn : convx.nn loss
        ``reduction='mean'`` or ``'sum'``.
    optimizer : convx.optim.Optimizer
        Over ``model.parameters()``.
    x_shards, y_shards : sequences of ndarray or distributed.Future
        The batch split along axis 0: inputs and targets, one pair per task. Futures (from
        ``client.scatter``) keep shards on the workers across steps.

    Returns
    -------
    loss : float
        The loss of the whole batch (the shards' losses combined as the reduction does).

    Notes
    -----
    The step equals the single-process step on the concatenated batch up to float rounding for
    nets whose output for a sample depends on that sample only. BatchNorm2d in training mode
    normalises each shard with the shard's own statistics (as PyTorch's DistributedDataParallel
    without SyncBatchNorm): the result differs from one whole-batch step. Its running statistics
    come back as the shards' average weighted by their sample counts (running_mean then equals the
    whole batch's; running_var averages the shards' variances); integer buffers come from the first
    shard. Dropout draws its masks on each worker from the model copy's own generator.
    """
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is part of the extra
        raise ImportError("train_step needs distributed: pip install 'convx-nn[dask]'") from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
    if not isinstance(model, Module):
        raise TypeError(f"model must be a convx.nn Module, got {type(model).__name__}")
    if getattr(loss_fn, "reduction", None) not in ("mean", "sum") or not hasattr(loss_fn, "backward"):
        raise ValueError(
            f"loss_fn must be a convx.nn loss with reduction 'mean' or 'sum', got {loss_fn!r}"
        )
    x_shards, y_shards = list(x_shards), list(y_shards)
    if not x_shards or len(x_shards) != len(y_shards):
        raise ValueError(
            f"x_shards and y_shards must be non-empty and of the same length, got {len(x_shards)} and {len(y_shards)}"
        )
    shared_model = client.scatter(model, broadcast=True, hash=False)
    shared_loss = client.scatter(loss_fn, broadcast=True, hash=False)
    tasks = [client.submit(_shard_gradients, shared_model, shared_loss, xs, ys, pure=False)
             for xs, ys in zip(x_shards, y_shards)]
    try:
        results = client.gather(tasks)
    finally:
        client.cancel([*tasks, shared_model, shared_loss])
    mean = loss_fn.reduction == "mean"
    total = sum(r["divisor"] for r in results) if mean else 1.0
    shares = [r["divisor"] / total if mean else 1.0 for r in results]
    loss = float(sum(share * r["loss"] for share, r in zip(shares, results)))
    model.zero_grad()
    for name, param in model.named_parameters():
        parts = [r["grads"][name] for r in results]
        if param.module is None or any(part is None for part in parts):
            continue
        grad = parts[0] * parts[0].dtype.type(shares[0])
        for share, part in zip(shares[1:], parts[1:]):
            grad = grad + part * part.dtype.type(share)
        param.module._store_grad(param.key, grad)
    optimizer.step()
    samples = sum(r["samples"] for r in results)
    state = model.state_dict()
    updated = {}
    for name, value in results[0]["buffers"].items():
        if np.issubdtype(value.dtype, np.floating) and samples:
            mixed = sum(r["buffers"][name].astype(np.float64) * (r["samples"] / samples) for r in results)
            updated[name] = np.asarray(mixed, dtype=value.dtype)
        else:
            updated[name] = value
    if updated:
        state.update(updated)
        model.load_state_dict(state)
    return loss
