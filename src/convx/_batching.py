"""Bounded sub-batches, so that Ctrl-C stops a long call on a huge batch.

A kernel runs without the GIL and cannot be interrupted: a signal that arrives meanwhile is
only acted on (KeyboardInterrupt) once control is back in Python. So the public ops call their
kernel once per sub-batch of at most ``SUB_BATCH_WORK`` units of work per thread (some tens
of milliseconds), and a KeyboardInterrupt surfaces between two sub-batches, leaving nothing
half-done behind: outputs are fresh arrays that the interrupted call never returns, and the
BLAS thread limit is released by its ``with`` block.

Outputs that belong to one image are written by that image's sub-batch, exactly as in a single
call. Outputs summed over the batch (weight and bias gradients) are summed per sub-batch by
the kernel and the partial sums added up here, in the kernels' dtype: one more way of
ordering the same sum, within the accuracy bound of any order (README, "Guarantees").
Most calls fit one sub-batch and make exactly the single kernel call they always made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ._threads import kernel_threads

# Units of work per thread in one kernel call: about 30 ms of pooling (an element visited is a
# unit) or of convolution (sixteen multiply-adds are one) on a 2020s x86-64 core.
SUB_BATCH_WORK = 1 << 28


def conv_work(weight_shape: Sequence[int], output_plane: int, input_shape: Sequence[int]) -> int:
    """One image's share of a convolution's work: the elements it reads, and its multiply-adds
    at a sixteenth each (BLAS runs 16 or more per cycle with AVX2 or AVX-512 FMA, where pooling
    visits about one element).

    Sub-batches cost convolutions more than pooling: each starts its thread team afresh and
    sums its per-thread weight-gradient partials, so they should not be cut finer than this.
    """
    return math.prod(weight_shape) * output_plane // 16 + math.prod(input_shape[1:])


def sub_batches(batch: int, work_per_image: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(batch)``, each at most ``SUB_BATCH_WORK`` per thread
    (but at least one image), as equal in size as whole images allow: a short last sub-batch
    would leave threads idle."""
    return even_slices(batch, max(1, SUB_BATCH_WORK * kernel_threads() // max(1, work_per_image)))


def even_slices(batch: int, most: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(batch)``, each at most ``most`` long, as equal in size as
    whole images allow."""
    n_parts = -(-batch // most)
    for index in range(n_parts):
        yield slice(index * batch // n_parts, (index + 1) * batch // n_parts)


def summed_sub_batches(
    batch: int, work_per_image: int, totals: Sequence[np.ndarray]
) -> Iterator[tuple[slice, Sequence[np.ndarray]]]:
    """Like :func:`sub_batches`, with the arrays a kernel should overwrite for each sub-batch.

    The first sub-batch writes ``totals`` themselves; the others write scratch arrays, which
    are added into ``totals`` as soon as the caller asks for the next sub-batch (or the end).
    """
    scratch: list[np.ndarray] = []
    for index, part in enumerate(sub_batches(batch, work_per_image)):
        if index == 0:
            yield part, totals
            continue
        if not scratch:
            scratch = [np.empty_like(total) for total in totals]
        yield part, scratch
        for total, partial in zip(totals, scratch):
            np.add(total, partial, out=total)
