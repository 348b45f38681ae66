"""How far a benchmark's timings can be trusted: other processes' use of the CPUs while it ran
(``/proc/stat``), and the spread of repeated timings. Shared by the single-op benchmark and ``--nets``."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

# Other processes' share of the CPUs (OtherLoad.fraction) above which timings are marked as disturbed.
BUSY_MACHINE = 0.05


class OtherLoad:
    """How busy other processes kept the CPUs while this one ran: the CPU time all processes
    used (``/proc/stat``) minus this process's own, as a fraction of the wall time of every core.
    On a shared machine that says which timings to distrust. None where /proc/stat is missing.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(value) for value in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks  # all but idle and iowait
        own = time.process_time()
        return busy, own, time.perf_counter()

    def fraction(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self._start, end
        cores = os.cpu_count() or 1
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * cores)


def wait_for_quiet(threshold: float, timeout: float, window: float = 5.0) -> bool:
    """Wait until other processes take at most ``threshold`` of the CPUs over ``window`` seconds;
    False after ``timeout`` seconds (or without /proc/stat)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        load = OtherLoad()
        time.sleep(window)
        fraction = load.fraction()
        if fraction is None:
            return False
        if fraction <= threshold:
            return True
    return False


def spread(runs: Sequence[float]) -> dict[str, float | int]:
    """Median, quartiles (inclusive method: with 3 runs, halfway between the median and each
    extreme), extremes and count of repeated timings, in seconds."""
    quartiles = statistics.quantiles(runs, n=4, method="inclusive") if len(runs) > 1 else [runs[0]] * 3
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs),
            "q1_s": quartiles[0], "q3_s": quartiles[2], "runs": len(runs)}


def relative_iqr(runs: Sequence[float]) -> float:
    """Interquartile range over the median of repeated timings (0 for a single run)."""
    summary = spread(runs)
    return (summary["q3_s"] - summary["q1_s"]) / summary["median_s"] if summary["median_s"] > 0 else 0.0
