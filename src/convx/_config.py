"""``convx.show_config()``: what a bug report needs to know about this installation."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np

from . import _core, _threads
from ._version import __version__


def config() -> dict:
    """The build and runtime configuration as a dict (see :func:`show_config`)."""
    from threadpoolctl import threadpool_info

    return {
        "convx": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "openmp": _core.openmp_enabled(),
        "threads": _threads.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "blas": [
            f"{lib.get('internal_api')} {lib.get('version')} ({os.path.basename(lib['filepath'])}, "
            f"{lib.get('threading_layer')}, {lib.get('num_threads')} threads)"
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        ],
    }


def show_config() -> None:
    """Print convx's version, build options, OpenMP status, thread count and the BLAS in use.

    Paste its output into bug reports.

    Examples
    --------
    >>> import convx
    >>> convx.show_config()  # doctest: +ELLIPSIS
    convx: ...
    """
    for key, value in config().items():
        if isinstance(value, list):
            value = "; ".join(value) or "none found"
        print(f"{key}: {value}")
