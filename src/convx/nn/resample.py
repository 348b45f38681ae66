"""Resampling layers: Upsample (nearest, nearest-exact, bilinear) and pixel (un)shuffling."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional
from .._checks import as_bool, as_int
from ..functional.resample import InterpolateMode, ScaleArg, SizeArg, _check_mode, _pair_of, _scale
from .module import Module, check_input


class Upsample(Module):
    """Resize the planes of (N, C, H, W) inputs, ``torch.nn.Upsample`` on the convx kernels.

    Parameters
    ----------
    size : int or (int, int), optional
        Output ``(out_h, out_w)``. Exactly one of ``size`` and ``scale_factor`` is given.
    scale_factor : float or (float, float), optional
        Output size ``floor(H * scale_factor)`` (and likewise for ``W``).
    mode : {'nearest', 'nearest-exact', 'bilinear'}, default 'nearest'
    align_corners : bool, optional
        Bilinear only (None means False); see :func:`convx.functional.interpolate`.
    recompute_scale_factor : bool, optional
        As :func:`convx.functional.interpolate`.

    Notes
    -----
    Input (N, C, H, W), output (N, C, out_h, out_w). The backward pass sends each output's
    gradient back to the input elements it was read from, with their weights.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> up = nn.Upsample(scale_factor=2, mode="bilinear")
    >>> up(np.array([[[[0.0, 4.0]]]]))[0, 0]
    array([[0., 1., 3., 4.],
           [0., 1., 3., 4.]])
    >>> up.backward(np.ones((1, 1, 2, 4)))[0, 0]
    array([[4., 4.]])
    """

    def __init__(
        self, size: SizeArg = None, scale_factor: ScaleArg = None, mode: InterpolateMode = "nearest",
        align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
    ) -> None:
        super().__init__()
        _check_mode(mode, align_corners)
        if (size is None) == (scale_factor is None):
            raise ValueError(
                f"exactly one of size and scale_factor must be given, got size={size!r} and "
                f"scale_factor={scale_factor!r}"
            )
        if size is not None:
            _pair_of("size", size, lambda name, v: as_int(name, v, 1))
        else:
            _pair_of("scale_factor", scale_factor, _scale)
        if recompute_scale_factor is not None:
            as_bool("recompute_scale_factor", recompute_scale_factor)
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def _args(self) -> dict[str, Any]:
        return {
            "size": self.size, "scale_factor": self.scale_factor, "mode": self.mode,
            "align_corners": self.align_corners, "recompute_scale_factor": self.recompute_scale_factor,
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (N, C, H, W) resized."""
        x = check_input(self, x, (4,))
        y = functional.interpolate(x, **self._args())
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        return functional.interpolate_backward(grad_out, input_shape, **self._args())

    def extra_repr(self) -> str:
        where = f"size={self.size!r}" if self.size is not None else f"scale_factor={self.scale_factor!r}"
        corners = f", align_corners={self.align_corners}" if self.align_corners is not None else ""
        return f"{where}, mode={self.mode!r}{corners}"


class UpsamplingNearest2d(Upsample):
    """Nearest-neighbour upsampling, ``torch.nn.UpsamplingNearest2d``: ``Upsample(size, scale_factor, 'nearest')``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.UpsamplingNearest2d(scale_factor=2)(np.array([[[[1.0, 2.0]]]]))[0, 0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.]])
    """

    def __init__(self, size: SizeArg = None, scale_factor: ScaleArg = None) -> None:
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """Bilinear upsampling with aligned corners, ``torch.nn.UpsamplingBilinear2d``:
    ``Upsample(size, scale_factor, 'bilinear', align_corners=True)``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.UpsamplingBilinear2d(size=(1, 3))(np.array([[[[0.0, 4.0]]]]))[0, 0]
    array([[0., 2., 4.]])
    """

    def __init__(self, size: SizeArg = None, scale_factor: ScaleArg = None) -> None:
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


class PixelShuffle(Module):
    """``(*, C * r**2, H, W)`` to ``(*, C, H * r, W * r)``, ``torch.nn.PixelShuffle``.

    Parameters
    ----------
    upscale_factor : int
        ``r``; ``r**2`` must divide the channels.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> shuffle = nn.PixelShuffle(2)
    >>> shuffle(np.arange(8.0).reshape(1, 8, 1, 1)).shape
    (1, 2, 2, 2)
    >>> shuffle.backward(np.ones((1, 2, 2, 2))).shape
    (1, 8, 1, 1)
    """

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = as_int("upscale_factor", upscale_factor, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (*, C * r**2, H, W) shuffled into (*, C, H * r, W * r)."""
        x = check_input(self, x, range(3, 33))
        y = functional.pixel_shuffle(x, self.upscale_factor)
        self._save_for_backward(y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out``: the inverse rearrangement."""
        grad_out, _ = self._saved_for_backward(grad_out)
        return functional.pixel_unshuffle(grad_out, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """``(*, C, H * r, W * r)`` to ``(*, C * r**2, H, W)``, ``torch.nn.PixelUnshuffle``.

    Parameters
    ----------
    downscale_factor : int
        ``r``; it must divide the height and width.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.PixelUnshuffle(2)(np.zeros((1, 3, 4, 6))).shape
    (1, 12, 2, 3)
    """

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        self.downscale_factor = as_int("downscale_factor", downscale_factor, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (*, C, H * r, W * r) unshuffled into (*, C * r**2, H, W)."""
        x = check_input(self, x, range(3, 33))
        y = functional.pixel_unshuffle(x, self.downscale_factor)
        self._save_for_backward(y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out``: the inverse rearrangement."""
        grad_out, _ = self._saved_for_backward(grad_out)
        return functional.pixel_shuffle(grad_out, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"
