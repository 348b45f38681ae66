"""``convx.show_config()``: what a bug report needs to know about this installation."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any

import numpy as np

from . import _core, _threads
from ._version import __version__


def build_info() -> dict[str, Any]:
    """How the compiled extension was built, as recorded by ``setup.py`` beside it.

    ``convx/_build_info.py`` is generated at build time (it is not in git); an extension
    built some other way has none, and this returns an empty dict.
    """
    try:
        module = importlib.import_module("convx._build_info")
    except ImportError:
        return {}
    return dict(module.BUILD_INFO)


def _blas_libraries() -> list[str]:
    """Every BLAS loaded in the process, with the package that shipped it (convx calls SciPy's)."""
    from threadpoolctl import threadpool_info

    def shipped_in(path: str) -> str:
        return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))

    return [
        f"{lib.get('internal_api')} {lib.get('version')} ({shipped_in(lib['filepath'])}, "
        f"{lib.get('threading_layer')}, {lib.get('num_threads')} threads)"
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def _autotune_state() -> str:
    from . import _autotune

    state = "on" if _autotune.get_autotune() else "off"
    return f"{state} ({len(_autotune.autotune_entries())} geometries tuned; cache file {_autotune.autotune_path()})"


def _memory_cache_state() -> str:
    from . import _memory

    cache = _memory.get_memory_cache()
    return (f"limit {cache['limit'] / 2**20:.0f} MiB, holding {cache['cached'] / 2**20:.1f} MiB in "
            f"{cache['buffers']} buffers; {cache['hits']} hits, {cache['misses']} misses")


def config() -> dict[str, Any]:
    """The build and runtime configuration as a dict (see :func:`show_config`).

    Keys starting with ``build.`` describe how the extension was compiled; the others the
    running process.
    """
    runtime: dict[str, Any] = {
        "convx": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "openmp": _core.openmp_enabled(),
        "threads": _threads.get_num_threads(),
        "openmp_runtime": _threads._OPENMP_LIBRARY or None,
        "fork_capped": _threads.fork_capped(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "blas": _blas_libraries(),
        "gemm": _core.gemm_kernel(),
        "autotune": _autotune_state(),
        "memory_cache": _memory_cache_state(),
    }
    built = build_info() or {"info": "not recorded (extension not built by convx's setup.py)"}
    return {**runtime, **{f"build.{key}": value for key, value in built.items()}}


def show_config() -> None:
    """Print convx's version, build flags, OpenMP status, thread count and the BLAS in use.

    Paste its output into bug reports. ``openmp`` says whether the loaded extension runs its
    kernels on OpenMP threads (a compiler without OpenMP gives a serial build); ``threads``
    is the count they use (see :func:`convx.set_num_threads`); ``openmp_runtime`` the OpenMP
    library they run on; ``fork_capped`` whether they are held at one thread because this
    process was forked after multi-thread calls (GNU libgomp); ``blas`` the BLAS libraries
    loaded in the process (convx calls SciPy's); ``gemm`` the ISA level of convx's own kernels
    ('avx512' or 'avx2' where the CPU has it, else 'blas': SciPy's BLAS over im2col blocks); the
    ``build.*`` lines are the compiler, flags, macros and Cython directives the extension was
    compiled with; ``autotune`` whether convolutions choose their implementation by measurement
    (:func:`convx.set_autotune`), how many geometries this process tuned, and the cache file;
    ``memory_cache`` the limit and contents of the cache of freed array buffers
    (:func:`convx.set_memory_cache`).

    Examples
    --------
    >>> import convx
    >>> convx.show_config()  # doctest: +ELLIPSIS
    convx: ...
    openmp: ...
    threads: ...
    blas: ...
    build.openmp: ...
    """
    for key, value in config().items():
        if isinstance(value, list):
            value = "; ".join(value) or "none found"
        print(f"{key}: {value}")
