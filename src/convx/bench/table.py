"""The single-op benchmark's report: tables a person can read in 100 columns, a summary in words,
and warnings when the figures cannot be trusted."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._load import BUSY_MACHINE
from .runner import Result

# Interquartile range / median above which an op's timings are marked as unsteady.
SPREAD_LIMIT = 0.15
# A reference convolution slower (or faster) by more than this at the end than at the start.
CALIBRATION_LIMIT = 0.15
WIDTH = 100
# issue 20: convx channels last at most this many times its channels-first time
LAYOUT_TARGET = 1.05
# --layout both: the channels-last outputs within this relative error (max |difference| / max
# |channels-first output|) of the channels-first ones. Both sum the same products in other
# orders: float32 rounding differs by about 1e-6 of the scale; a layout mistake, by about 1.
LAYOUT_AGREEMENT = 1e-4

PEERS = {"numpy": "NumPy", "torch": "PyTorch", "winograd": "wino"}
NAMES = {"numpy": "NumPy", "torch": "PyTorch", "winograd": "convx's Winograd", "convx_nhwc": "convx NHWC"}
SHORT_OPS = {"forward": "forward", "backward_input": "bwd input", "backward_weight": "bwd weight",
             "backward": "backward"}


def _ms(seconds: float) -> str:
    """Milliseconds to three significant figures (at most six characters below 100 s)."""
    ms = seconds * 1e3
    for bound, digits in ((100, 0), (10, 1), (1, 2)):
        if ms >= bound:
            return f"{ms:.{digits}f}"
    return f"{ms:.3f}"


def _cell(result: Result, name: str) -> str:
    """``median ±half-IQR%``, with ``*`` when the spread is above ``SPREAD_LIMIT``."""
    seconds = result.times.get(name)
    if seconds is None:
        return "-"
    spread = result.spread.get(name, 0.0)
    flag = "*" if spread > SPREAD_LIMIT else " "
    return f"{_ms(seconds):>6s} ±{min(99, round(50 * spread)):2d}%{flag}"


def _ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(result: Result) -> str:
    """convx's GFLOP/s (convolutions) or GB/s (pooling)."""
    rate = result.rate()
    return "-" if rate is None else f"{rate / 1e9:.1f}"


@dataclass
class Column:
    top: str
    bottom: str
    width: int
    cell: Callable[[Result], str]
    left: bool = False


def _layout_ratio(result: Result) -> float | None:
    """convx's channels-last time / its channels-first time (``--layout both``)."""
    return result.ratio("convx_nhwc", "convx")


def _columns(results: Sequence[Result], kind: str, wide: bool) -> list[Column]:
    ran = {name for r in results for name in r.times}
    both = "convx_nhwc" in ran
    case_width = max(4, *(len(r.case) for r in results))
    ops = {r.op: r.op if wide else SHORT_OPS.get(r.op, r.op) for r in results}
    layout = "NCHW" if both else results[0].layout
    columns = [Column("", "case", case_width, lambda r: r.case, left=True),
               Column("", "op", max(2, *(len(v) for v in ops.values())), lambda r: ops[r.op], left=True),
               Column("convx" if layout == "NCHW" and not both else f"convx {layout}", "ms", 12,
                      lambda r: _cell(r, "convx"))]
    if both and wide:
        columns.append(Column("convx NHWC", "ms", 12, lambda r: _cell(r, "convx_nhwc")))
    peers = ["winograd", "numpy", "torch"] if wide else ["torch"] if both else ["numpy", "torch"]
    for name in peers:
        if name in ran:
            columns.append(Column(PEERS[name], "ms", 12, lambda r, name=name: _cell(r, name)))
    columns.append(Column("convx", "GB/s" if kind == "pool" else "GFLOP/s", 7, _rate))
    if "numpy" in ran:
        columns.append(Column("x faster", "than NumPy", 10, lambda r: _ratio(r.ratio("numpy", "convx"), 1)))
    if "torch" in ran:
        columns.append(Column("time /", "PyTorch", 7, lambda r: _ratio(r.ratio("convx", "torch"))))
        if wide and "winograd" in ran:
            columns.append(Column("wino time", "/ PyTorch", 9, lambda r: _ratio(r.ratio("winograd", "torch"))))
    if both:
        columns.append(Column("NHWC time", "/ NCHW", 9, lambda r: _ratio(_layout_ratio(r))))
    return columns


def _render(results: Sequence[Result], kind: str, wide: bool) -> list[str]:
    columns = _columns(results, kind, wide)

    def row(texts: Sequence[str]) -> str:
        return " ".join(t.ljust(c.width) if c.left else t.rjust(c.width) for c, t in zip(columns, texts)).rstrip()

    lines = [row([c.top for c in columns]), row([c.bottom for c in columns])]
    lines.append("-" * len(max(lines, key=len)))
    lines += [row([c.cell(r) for c in columns]) for r in results]
    return lines


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in values) / len(values))


def _ratios(results: Sequence[Result], numerator: str, denominator: str) -> list[float]:
    return [x for r in results if (x := r.ratio(numerator, denominator))]


def format_table(results: Sequence[Result], repeat: int, wide: bool = False) -> str:
    """The convolutions, then the pooling ops, each with its geometric means; a legend."""
    ran = {name for r in results for name in r.times}
    lines: list[str] = []
    for kind, title in (("conv", "Convolutions"), ("pool", "Pooling")):
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        if lines:
            lines.append("")
        lines.append(title)
        lines += _render(rows, kind, wide)
        means = []
        if "numpy" in ran and (ratios := _ratios(rows, "numpy", "convx")):
            means.append(f"x faster than NumPy {geomean(ratios):.2f}")
        if "torch" in ran and (ratios := _ratios(rows, "convx", "torch")):
            means.append(f"time / PyTorch {geomean(ratios):.2f}")
        if wide and kind == "conv" and "winograd" in ran and (ratios := _ratios(rows, "auto", "torch")):
            means.append(f"with algorithm='auto' (Winograd where it applies) {geomean(ratios):.2f}")
        if "convx_nhwc" in ran and (ratios := _ratios(rows, "convx_nhwc", "convx")):
            means.append(f"NHWC time / NCHW {geomean(ratios):.2f}")
        if means:
            lines += _wrap(f"geometric mean over {len(rows)} ops: {', '.join(means)}")
    lines.append("")
    fewer = any(n < repeat for r in results for n in r.runs.values())
    legend = [f"ms: median of {repeat} runs{' (fewer where calls are slow)' if fewer else ''} ± half the "
              f"interquartile range (* above ±{50 * SPREAD_LIMIT:g}%)."]
    if "numpy" in ran:
        legend.append("x faster than NumPy: NumPy's time / convx's (higher is better).")
    if "torch" in ran:
        legend.append("time / PyTorch: convx's time / PyTorch's (lower is better; below 1, convx is faster).")
    layouts = {r.layout for r in results}
    if "convx_nhwc" in ran:
        legend.append("NHWC time / NCHW: convx's time channels last / its time channels first, the two timed in "
                      f"the same rounds (lower is better; issue 20's target: at most {LAYOUT_TARGET:g}).")
        if "torch" in ran:
            legend.append("PyTorch ran channels first.")
        if not wide and "numpy" in ran:
            legend.append("NumPy's times: with --wide.")
    elif "NHWC" in layouts:
        said = ["convx NHWC: convx's inputs and outputs channels last, (N, H, W, C)"]
        if "torch" in ran:
            said.append("PyTorch's in torch.channels_last memory format")
        if "numpy" in ran:
            said.append("the NumPy reference's channels first")
        legend.append("; ".join(said) + ".")
    legend.append("GFLOP/s: 2 x multiply-adds / time; GB/s: bytes the op must read and write / time.")
    if not wide:
        legend.append("bwd input, bwd weight: one gradient alone; backward: all of them in one call. "
                      "--wide shows convx's Winograd algorithm too.")
    lines += _wrap(" ".join(legend))
    return "\n".join(lines)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH)


def summary(results: Sequence[Result]) -> str:
    """One sentence: convx's time against PyTorch's per kind of op, and its speed-up over NumPy."""
    parts = []
    conv = _ratios([r for r in results if r.kind == "conv"], "convx", "torch")
    pool = _ratios([r for r in results if r.kind == "pool"], "convx", "torch")
    if conv or pool:
        torch = [f"{geomean(conv):.2f}x PyTorch's time on convolutions (geomean of {len(conv)} op{'s' if len(conv) > 1 else ''})"] if conv else []
        if pool:
            torch.append(f"{geomean(pool):.2f}x" + ("" if conv else " PyTorch's time") + " on pooling "
                         f"({len(pool)} op{'s' if len(pool) > 1 else ''})")
        parts.append("convx took " + " and ".join(torch))
    numpy = _ratios(results, "numpy", "convx")
    if numpy:
        mean = geomean(numpy)
        faster = f"{mean:.1f}x faster" if mean >= 1 else f"{1 / mean:.1f}x slower"
        faster += f" than pure NumPy (geomean of {len(numpy)} ops)"
        parts.append(f"it was {faster}" if parts else f"convx was {faster}")
    layout = layout_summary(results)
    if not parts:
        if layout:
            return layout
        return "convx ran alone: no NumPy or PyTorch timings to compare with."
    return "\n".join(_wrap("; ".join(parts) + ".") + ([layout] if layout else []))


def layout_summary(results: Sequence[Result]) -> str:
    """``--layout both``: convx's channels-last time against its channels-first time in words
    (geomean, worst op, how many above the target) and how far apart their outputs were;
    empty without channels-last timings."""
    pairs = [(x, r) for r in results if (x := _layout_ratio(r))]
    if not pairs:
        return ""
    worst, worst_result = max(pairs, key=lambda pair: pair[0])
    above = sum(x > LAYOUT_TARGET for x, _ in pairs)
    text = (f"Channels last, convx took {geomean([x for x, _ in pairs]):.2f}x its channels-first time (geomean of "
            f"{len(pairs)} op{'s' if len(pairs) > 1 else ''}), at worst {worst:.2f}x ({worst_result.case} "
            f"{worst_result.op}); {above} of {len(pairs)} op{'s' if len(pairs) > 1 else ''} took more than "
            f"{LAYOUT_TARGET:g}x (issue 20's target).")
    errors = [(r.layout_error, r) for r in results if r.layout_error is not None]
    if errors:
        error, error_result = max(errors, key=lambda pair: pair[0])
        text += (f" The two layouts' outputs agreed to {error:.1e} relative error at worst ({error_result.case} "
                 f"{error_result.op}; bound {LAYOUT_AGREEMENT:g}).")
    return "\n".join(_wrap(text))


@dataclass
class Trust:
    """What the run saw of the machine: other processes' share of the CPUs (overall and per
    case; None without /proc/stat) and a reference convolution's time at the start and end."""

    other_load: float | None
    load_by_case: dict[str, float | None]
    calibration: tuple[float, float] | None = None
    shown: tuple[str, ...] = ("convx", "numpy", "torch", "winograd")  # the implementations in the table

    def unsteady(self, results: Sequence[Result]) -> list[tuple[Result, str, float]]:
        """(result, implementation, spread) of every timing shown whose spread is above ``SPREAD_LIMIT``."""
        return [(r, name, s) for r in results for name, s in r.spread.items()
                if s > SPREAD_LIMIT and name in self.shown]

    def warnings(self, results: Sequence[Result], repeat: int) -> list[str]:
        found = []
        if self.other_load is not None and self.other_load > BUSY_MACHINE:
            busiest = sorted(((load, case) for case, load in self.load_by_case.items() if load is not None),
                             reverse=True)[:3]
            cases = ", ".join(f"{case} {100 * load:.0f}%" for load, case in busiest)
            found.append(f"WARNING: other processes used {100 * self.other_load:.0f}% of the CPUs during this run "
                         f"(above {100 * BUSY_MACHINE:.0f}%; busiest: {cases}): the figures are disturbed. "
                         "Rerun on an idle machine.")
        unsteady = self.unsteady(results)
        if unsteady:
            ops = {(r.case, r.op) for r, _, _ in unsteady}
            worst = sorted(unsteady, key=lambda item: -item[2])[:4]
            named = ", ".join(f"{r.case} {r.op} ({NAMES.get(name, name)} ±{50 * s:.0f}%)" for r, name, s in worst)
            found.append(f"WARNING: {len(ops)} of {len(results)} ops varied by more than ±{50 * SPREAD_LIMIT:g}% "
                         f"between their {repeat} runs (marked *; worst: {named}). Rerun on an idle machine, "
                         "or with a larger --repeat.")
        disagree = [r for r in results if r.layout_error is not None and r.layout_error > LAYOUT_AGREEMENT]
        if disagree:
            named = ", ".join(f"{r.case} {r.op} ({r.layout_error:.1e})" for r in disagree[:4])
            found.append(f"WARNING: convx's channels-last outputs differ from its channels-first ones by more than "
                         f"{LAYOUT_AGREEMENT:g} (relative) in {len(disagree)} op{'s' if len(disagree) > 1 else ''}: "
                         f"{named}.")
        if self.calibration is not None:
            start, end = self.calibration
            if abs(end / start - 1) > CALIBRATION_LIMIT:
                found.append(f"WARNING: a reference convolution took {start * 1e3:.2f} ms at the start of the run and "
                             f"{end * 1e3:.2f} ms at the end: the machine's speed changed while it ran.")
        return [line for warning in found for line in _wrap(warning)]

    def verdict(self, results: Sequence[Result], repeat: int) -> str:
        """The warnings, or one line saying what makes the figures trustworthy."""
        warnings = self.warnings(results, repeat)
        if warnings:
            return "\n".join(warnings)
        said = [f"every op within ±{50 * SPREAD_LIMIT:g}% over its {repeat} runs"]
        if self.other_load is not None:
            said.append(f"other processes used {100 * self.other_load:.0f}% of the CPUs")
        if self.calibration is not None:
            said.append(f"a reference convolution took {self.calibration[0] * 1e3:.2f} ms at the start and "
                        f"{self.calibration[1] * 1e3:.2f} ms at the end")
        return "\n".join(_wrap("Steady: " + "; ".join(said) + "."))

    def as_json(self, results: Sequence[Result]) -> dict:
        return {"other_load": self.other_load, "other_load_by_case": self.load_by_case,
                "busy_threshold": BUSY_MACHINE, "spread_limit": SPREAD_LIMIT,
                "calibration_s": None if self.calibration is None else list(self.calibration),
                "unsteady": [{"case": r.case, "op": r.op, "implementation": name, "spread": s}
                             for r, name, s in self.unsteady(results)]}
