"""Dropout: random zeroing in training mode, identity in evaluation mode (of elements, or of
whole channels)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import _core
from .._batching import sub_batches
from .._checks import as_bool, contiguous
from .._threads import kernel_threads
from ..functional.activations import _chunks
from .init import RngLike, as_generator
from .module import Module, check_input


class Dropout(Module):
    """Zero each element with probability ``p`` while training, scaling the rest by ``1 / (1 - p)``.

    In evaluation mode (``eval()``) the layer is the identity, so the expected activation is the
    same in both modes.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing an element, in [0, 1].
    inplace : bool, default False
        Overwrite the input with the output.
    rng : None, int or numpy.random.Generator
        Source of the masks: a seed makes the sequence of masks reproducible. Each forward draws
        one 64-bit number from it; an element's mask is a hash of that number and the element's
        index (so it does not depend on the thread count, and the backward recomputes it instead
        of keeping a mask).

    Notes
    -----
    Any input shape. ``backward`` applies the mask of the preceding ``forward``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> drop = nn.Dropout(0.5, rng=0)
    >>> y = drop(np.ones(8))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> drop.eval()(np.ones(3))
    array([1., 1., 1.])
    """

    p: float
    inplace: bool
    rng: np.random.Generator

    def __init__(self, p: float = 0.5, inplace: bool = False, *, rng: RngLike = None) -> None:
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= float(p) <= 1:
            raise ValueError(f"dropout probability p must be a number in [0, 1], got {p!r}")
        self.p = float(p)
        self.inplace = as_bool("inplace", inplace)
        self.rng = as_generator(rng)

    def _apply(self, source: np.ndarray, out: np.ndarray, seed: int) -> None:
        """out = source * scale where the element's hash under ``seed`` keeps it, else 0."""
        threshold = round(self.p * 2.0**32)
        scale = 1.0 / (1.0 - self.p)
        flat_in, flat_out = source.reshape(-1), out.reshape(-1)
        for part in _chunks(flat_in.size):
            _core.dropout(flat_in[part], flat_out[part], part.start, seed, threshold, scale,
                          kernel_threads(elements=part.stop - part.start))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape, masked and rescaled in training mode."""
        x = check_input(self, x, range(33))
        y: np.ndarray
        if not self.training or self.p == 0:
            y = x.copy()
            self._save_for_backward(y, None)
            return y
        if self.p == 1 or round(self.p * 2.0**32) >= 2**32:
            y = np.zeros(x.shape, dtype=x.dtype)
            self._save_for_backward(y, -1)
            return y
        # One seed per forward: each element's mask is a hash of (seed, its index), which the
        # backward recomputes, so no mask is kept.
        seed = int(self.rng.integers(0, 2**64, dtype=np.uint64))
        if self.inplace:
            if not (x.flags.writeable and x.flags.c_contiguous and x.flags.aligned):
                raise ValueError("inplace=True needs x writeable, C-contiguous and aligned (it is overwritten): pass inplace=False for a new array")
            y = x
            source = x
        else:
            source = contiguous(x)
            y = np.empty(x.shape, dtype=x.dtype)
        self._apply(source, y, seed)
        self._save_for_backward(y, seed)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` times the forward pass's mask (unchanged in evaluation mode)."""
        grad_out, saved = self._saved_for_backward(grad_out)
        seed: int | None = saved[0]
        if seed is None:
            unchanged: np.ndarray = grad_out.copy()
            return unchanged
        if seed == -1:
            return np.zeros(grad_out.shape, dtype=grad_out.dtype)
        grad_x = np.empty(grad_out.shape, dtype=grad_out.dtype)
        self._apply(contiguous(grad_out), grad_x, seed)
        return grad_x

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace=True" if self.inplace else f"p={self.p}"


class _ChannelDropout(Dropout):
    """Dropout of whole channels: one draw per (sample, channel), as ``torch.nn.Dropout2d`` & co.

    Subclasses give ``_batched_ndim`` (the input's dimensions with a batch); an input with one
    fewer is a single sample (its channels are dimension 0), except where ``_unbatched_warning``
    says PyTorch reads it as a batch anyway.
    """

    _batched_ndim = 4
    _unbatched_warning: str | None = None

    def _planes(self, shape: tuple[int, ...]) -> int:
        """The number of channels of all the samples: each is masked as a whole."""
        if len(shape) == self._batched_ndim or self._unbatched_warning is not None:
            return shape[0] * shape[1]
        return shape[0]

    def _apply(self, source: np.ndarray, out: np.ndarray, seed: int) -> None:
        """out = source * scale in the channels whose hash under ``seed`` keeps them, else 0."""
        threshold = round(self.p * 2.0**32)
        scale = 1.0 / (1.0 - self.p)
        planes = self._planes(source.shape)
        if source.size == 0:
            return
        flat_in = source.reshape(planes, -1)
        flat_out = out.reshape(planes, -1)
        for part in sub_batches(planes, 2 * flat_in.shape[1]):
            _core.channel_dropout(flat_in[part], flat_out[part], part.start, seed, threshold, scale,
                                  kernel_threads(elements=flat_in[part].size))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` with whole channels zeroed and the rest rescaled, in training mode."""
        x = check_input(self, x, (self._batched_ndim - 1, self._batched_ndim))
        if x.ndim < self._batched_ndim and self._unbatched_warning is not None:
            warnings.warn(self._unbatched_warning, UserWarning, stacklevel=2)
        return super().forward(x)


class Dropout1d(_ChannelDropout):
    """Zero each channel of each sample with probability ``p`` while training, scaling the rest by
    ``1 / (1 - p)``, as ``torch.nn.Dropout1d``; the identity in evaluation mode.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing a channel, in [0, 1].
    inplace : bool, default False
        Overwrite the input with the output.
    rng : None, int or numpy.random.Generator
        Source of the masks, as :class:`Dropout`'s: one 64-bit draw per forward, each channel's
        mask a hash of it and the channel's index ``n * C + c``.

    Notes
    -----
    Input (N, C, L), or (C, L) for a single sample.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> y = nn.Dropout1d(0.5, rng=0)(np.ones((1, 6, 3)))
    >>> y[0]
    array([[0., 0., 0.],
           [2., 2., 2.],
           [2., 2., 2.],
           [0., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.]])
    """

    _batched_ndim = 3


class Dropout2d(_ChannelDropout):
    """Zero each channel of each sample with probability ``p`` while training, scaling the rest by
    ``1 / (1 - p)``, as ``torch.nn.Dropout2d``; the identity in evaluation mode.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing a channel (a whole H x W plane), in [0, 1].
    inplace : bool, default False
        Overwrite the input with the output.
    rng : None, int or numpy.random.Generator
        Source of the masks, as :class:`Dropout`'s: one 64-bit draw per forward, each channel's
        mask a hash of it and the channel's index ``n * C + c``.

    Notes
    -----
    Input (N, C, H, W). A 3-D input is read as PyTorch reads it: as (N, C, L), one mask per
    (n, c) (channel-wise 1-D dropout), with PyTorch's warning; use :class:`Dropout1d` for that
    without the warning.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> drop = nn.Dropout2d(0.5, rng=0)
    >>> y = drop(np.ones((2, 3, 4, 4)))
    >>> y.max(axis=(2, 3))
    array([[0., 2., 2.],
           [0., 0., 0.]])
    >>> bool(np.all(y.min(axis=(2, 3)) == y.max(axis=(2, 3))))
    True
    """

    _batched_ndim = 4
    _unbatched_warning = (
        "Dropout2d: received a 3-D input; as PyTorch, it is read as (N, C, L) and each (n, c) row is "
        "dropped as a whole (channel-wise 1-D dropout), not as one unbatched (C, H, W) sample. Use "
        "Dropout1d for that behaviour without this warning."
    )


class Dropout3d(_ChannelDropout):
    """Zero each channel of each sample with probability ``p`` while training, scaling the rest by
    ``1 / (1 - p)``, as ``torch.nn.Dropout3d``; the identity in evaluation mode.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing a channel (a whole D x H x W volume), in [0, 1].
    inplace : bool, default False
        Overwrite the input with the output.
    rng : None, int or numpy.random.Generator
        Source of the masks, as :class:`Dropout`'s.

    Notes
    -----
    Input (N, C, D, H, W), or (C, D, H, W) for a single sample.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> y = nn.Dropout3d(0.5, rng=0)(np.ones((4, 2, 2, 2)))
    >>> y.max(axis=(1, 2, 3))
    array([0., 2., 2., 0.])
    """

    _batched_ndim = 5
