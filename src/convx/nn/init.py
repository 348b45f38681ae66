"""Weight initialisation as PyTorch's layers do it by default, reproducible from a seed.

Every function takes ``rng``: None (fresh OS entropy), an int seed, or a
``numpy.random.Generator`` (shared by several layers to make a whole network reproducible from
one seed). Values are drawn in float64 and then cast, so a float32 and a float64 layer built
from the same seed hold the same weights up to rounding.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
from numpy.typing import DTypeLike

from .module import as_dtype

#: What layers accept as ``rng``: None, an int seed, a SeedSequence or a Generator.
RngLike = Union[None, int, np.random.SeedSequence, np.random.Generator]


def as_generator(rng: Any) -> np.random.Generator:
    """``rng`` (None, an int seed, a SeedSequence or a Generator) as a ``numpy.random.Generator``.

    A Generator is returned as it is, so layers built from one Generator draw successive values.
    """
    if isinstance(rng, (bool, np.bool_)) or isinstance(rng, float):
        raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}") from exc


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs feeding each output, as PyTorch computes it: ``shape[1] * prod(shape[2:])``.

    ``(C_out, C_in / groups, kH, kW)`` for Conv2d, ``(out, in)`` for Linear; for ConvTranspose2d's
    ``(C_in, C_out / groups, kH, kW)`` this is ``C_out / groups * kH * kW``, as in PyTorch.
    """
    if len(shape) < 2:
        raise ValueError(f"fan_in needs at least 2 dimensions, got shape {tuple(shape)}")
    return int(shape[1] * math.prod(shape[2:]))


def uniform(shape: tuple[int, ...], bound: float, rng: RngLike = None, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Samples of ``U(-bound, bound)`` with the given shape and dtype.

    Parameters
    ----------
    shape : tuple of int
    bound : float
        Half-width of the interval, non-negative.
    rng : None, int or numpy.random.Generator
    dtype : float32 or float64

    Returns
    -------
    values : ndarray, shape ``shape``

    Examples
    --------
    >>> from convx.nn import init
    >>> w = init.uniform((2, 3), 0.5, rng=0)
    >>> w.shape, w.dtype, bool(abs(w).max() <= 0.5)
    ((2, 3), dtype('float32'), True)
    """
    if not bound >= 0:
        raise ValueError(f"bound must be non-negative, got {bound}")
    return as_generator(rng).uniform(-bound, bound, size=tuple(shape)).astype(as_dtype(dtype))


def kaiming_uniform(
    shape: tuple[int, ...], a: float = 0.0, rng: RngLike = None, dtype: DTypeLike = np.float32
) -> np.ndarray:
    """He/Kaiming uniform initialisation for a leaky-ReLU of slope ``a`` (``fan_in`` mode).

    ``U(-bound, bound)`` with ``bound = gain * sqrt(3 / fan_in)`` and
    ``gain = sqrt(2 / (1 + a**2))``, as ``torch.nn.init.kaiming_uniform_``. PyTorch's
    Conv2d, ConvTranspose2d and Linear use ``a = sqrt(5)``, which makes the bound
    ``1 / sqrt(fan_in)``.

    Parameters
    ----------
    shape : tuple of int
        The weight's shape, at least 2-D (see :func:`fan_in`).
    a : float, default 0
        Negative slope of the rectifier that follows the layer (0 for ReLU).
    rng : None, int or numpy.random.Generator
    dtype : float32 or float64

    Returns
    -------
    weight : ndarray, shape ``shape``

    Examples
    --------
    >>> import math
    >>> from convx.nn import init
    >>> w = init.kaiming_uniform((6, 1, 5, 5), a=math.sqrt(5), rng=0)
    >>> bool(abs(w).max() <= 1 / math.sqrt(25))
    True
    """
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in(shape)), rng, dtype)


def default_weight_and_bias(
    weight_shape: tuple[int, ...], bias_size: int | None, rng: RngLike, dtype: DTypeLike
) -> tuple[np.ndarray, np.ndarray | None]:
    """PyTorch's ``reset_parameters`` for Conv2d, ConvTranspose2d and Linear.

    The weight from ``kaiming_uniform(a=sqrt(5))``, then (unless ``bias_size`` is None) a bias of
    ``bias_size`` values from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, both from one generator.
    """
    generator = as_generator(rng)
    weight = kaiming_uniform(weight_shape, a=math.sqrt(5.0), rng=generator, dtype=dtype)
    if bias_size is None:
        return weight, None
    return weight, uniform((bias_size,), 1.0 / math.sqrt(fan_in(weight_shape)), generator, dtype)
