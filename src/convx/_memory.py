"""convx's cache of large array buffers: ``set_memory_cache``, ``get_memory_cache``,
``clear_memory_cache`` and the scope convx's layers and optimizers run in (``cached_memory``).

The arrays a layer returns are allocated anew on every call; above glibc's mmap threshold each
gets fresh pages from the kernel and gives them back when freed, so every call pays the page
faults. While convx's code runs, NumPy allocates through a handler (``_memory.h``) that keeps
freed buffers of 256 KiB and more, up to a limit, and hands one back to the next array of
exactly its size: a loop that repeats its shapes, training or inference, reuses its pages. The
limit is the memory this can hold beyond what the arrays in use take.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from . import _core

ENVIRONMENT_VARIABLE = "CONVX_MEMORY_CACHE"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def default_limit() -> int:
    """1 GiB, or an eighth of the physical memory where that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 8 << 30
    return min(1 << 30, max(0, physical) // 8)


def parse_size(text: str) -> int:
    """Bytes from ``'0'``, ``'536870912'``, ``'512M'``, ``'512MiB'`` or ``'2G'`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"a size in bytes, optionally with K, M, G or T (binary), e.g. 512M or 0; got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def set_memory_cache(limit: int | str | None = None) -> None:
    """Keep at most ``limit`` bytes of freed array buffers for convx's next arrays to reuse.

    The outputs and scratch arrays of :mod:`convx.nn` layers (forward and backward) and of the
    optimizers' steps come from a cache of the buffers of 256 KiB and more that such arrays
    left when they were freed, whenever that was: a training or inference loop that repeats its
    shapes stops paying the kernel for fresh pages on every call (a MobileNet-style CIFAR
    inference at batch 64 on a 2-core Xeon VM: 29-31 ms without, 15-16.5 ms with). A buffer is
    reused only for an array of exactly its size; the oldest go first when the limit is reached.

    Parameters
    ----------
    limit : int or str, optional
        Bytes (``0`` disables the cache and frees what it holds; a string such as ``'512M'`` or
        ``'2GiB'`` is read in binary units). None, the default, restores the default limit:
        1 GiB, or an eighth of the physical memory where that is less. The environment
        variable ``CONVX_MEMORY_CACHE`` sets it at import.

    Examples
    --------
    >>> import convx
    >>> convx.set_memory_cache("256M")
    >>> convx.get_memory_cache()["limit"]
    268435456
    >>> convx.set_memory_cache()
    """
    if limit is None:
        value = default_limit()
    elif isinstance(limit, str):
        value = parse_size(limit)
    elif isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be a number of bytes (an int or a string such as '512M'), got {limit!r}")
    else:
        value = limit
    if value < 0:
        raise ValueError(f"limit must be at least 0 bytes (0 disables the cache), got {value}")
    _core.set_memory_cache_limit(value)


def get_memory_cache() -> dict[str, Any]:
    """The memory cache's state: its ``limit``, the bytes and ``buffers`` it holds
    (``cached``), and its ``hits`` and ``misses`` since the process started (requests of 256 KiB
    and more made while convx's code ran: reused a buffer, or did not).

    Examples
    --------
    >>> import convx
    >>> sorted(convx.get_memory_cache())
    ['buffers', 'cached', 'hits', 'limit', 'misses']
    """
    return dict(_core.memory_cache_stats())


def clear_memory_cache() -> None:
    """Free every buffer the memory cache holds (the limit stays).

    Examples
    --------
    >>> import convx
    >>> convx.clear_memory_cache()
    >>> convx.get_memory_cache()["cached"]
    0
    """
    limit = get_memory_cache()["limit"]
    _core.set_memory_cache_limit(0)
    _core.set_memory_cache_limit(limit)


def cached_memory() -> _core.CachedMemory:
    """A context manager under which NumPy's allocations in this thread go through the cache."""
    return _core.CachedMemory()


def _from_environment() -> None:
    text = os.environ.get(ENVIRONMENT_VARIABLE)
    if text is None or not text.strip():
        set_memory_cache()
        return
    try:
        set_memory_cache(parse_size(text))
    except ValueError as error:
        warnings.warn(f"{ENVIRONMENT_VARIABLE}={text!r} ignored ({error}); using the default limit",
                      RuntimeWarning, stacklevel=2)
        set_memory_cache()


_from_environment()
