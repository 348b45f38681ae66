"""Interleaved A/B of two convx builds in one process, beside PyTorch (when installed).

On a shared machine the same op's time moves by 10-30% from run to run, so a change of 5-10%
is only visible when the two builds are timed call by call in one process. This loads a
second, already built copy of convx (for example a git worktree of an older commit, built
with ``python setup.py build_ext --inplace``) as the package ``convx_old`` next to the
``convx`` on the path, and times both, and PyTorch, interleaved on the benchmark's cases::

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py build_ext --inplace)
    PYTHONPATH=src python bench/ab_builds.py /tmp/old/src/convx --case vgg_3x3 --op fwd --op bin

It prints each op's medians and the ratios new/old, old/torch and new/torch. convx's modules
import each other relatively, so the copy works under its new name. ``convx`` itself must be
imported first: imported the other way round, ``convx._core`` resolved to the old extension.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any, Callable

import numpy as np

import convx  # noqa: F401  (before convx_old: see the module docstring)
import convx.functional as new_functional
from convx.bench.cases import CASES, ConvCase

OPS = ("fwd", "bin", "bw", "full")


def _conv_ops(module: Any, case: ConvCase, arrays: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    x, w, gy = arrays["x"], arrays["weight"], arrays["grad_out"]
    kw = dict(stride=case.stride, padding=case.padding, groups=case.groups)
    return {
        "fwd": lambda: module.conv2d(x, w, None, **kw),
        "bin": lambda: module.conv2d_backward_input(gy, w, x.shape, **kw),
        "bw": lambda: module.conv2d_backward_weight(gy, x, w.shape, **kw),
        "full": lambda: module.conv2d_backward(gy, x, w, **kw),
    }


def _torch_ops(torch: Any, case: ConvCase, arrays: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    tx, tw, tg = (torch.from_numpy(arrays[k]) for k in ("x", "weight", "grad_out"))
    stride, padding = (case.stride,) * 2, (case.padding,) * 2

    def backward(mask: tuple[bool, bool, bool]) -> Callable[[], Any]:
        return lambda: torch.ops.aten.convolution_backward(
            tg, tx, tw, None, stride, padding, (1, 1), False, (0, 0), case.groups, mask
        )

    return {
        "fwd": lambda: torch.nn.functional.conv2d(tx, tw, None, case.stride, case.padding, 1, case.groups),
        "bin": backward((True, False, False)),
        "bw": backward((False, True, False)),
        "full": backward((True, True, True)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="a convx package directory with its extension built in place")
    conv_cases = [name for name, case in CASES.items() if isinstance(case, ConvCase)]
    parser.add_argument("--case", action="append", choices=conv_cases, help="(repeatable; default: all)")
    parser.add_argument("--op", action="append", choices=OPS, help="(repeatable; default: fwd, bin, bw)")
    parser.add_argument("--repeat", type=int, default=11, help="timed rounds per op (default 11)")
    args = parser.parse_args(argv)
    if not any((args.old / f"_core{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        parser.error(f"{args.old} holds no built extension (_core{EXTENSION_SUFFIXES[0]}); build it in place first")

    staging = Path(tempfile.mkdtemp(prefix="convx-ab-"))
    shutil.copytree(args.old, staging / "convx_old", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(staging))
    import convx_old.functional as old_functional

    try:
        import torch

        torch.set_num_threads(convx.get_num_threads())
    except ImportError:
        torch = None

    rng = np.random.default_rng(0)
    for name in args.case or conv_cases:
        case = CASES[name]
        assert isinstance(case, ConvCase)
        arrays = case.arrays(rng)
        runners = {"old": _conv_ops(old_functional, case, arrays), "new": _conv_ops(new_functional, case, arrays)}
        if torch is not None:
            runners["torch"] = _torch_ops(torch, case, arrays)
        for op in args.op or OPS[:3]:
            times: dict[str, list[float]] = {key: [] for key in runners}
            for _ in range(args.repeat):
                for key, ops in runners.items():
                    start = time.perf_counter()
                    ops[op]()
                    times[key].append(time.perf_counter() - start)
            med = {key: float(np.median(t)) * 1e3 for key, t in times.items()}
            line = f"{name:14s} {op:4s} " + " ".join(f"{key} {m:8.2f} ms" for key, m in med.items())
            line += f"   new/old {med['new'] / med['old']:.3f}"
            if "torch" in med:
                line += f"  old/torch {med['old'] / med['torch']:.2f}  new/torch {med['new'] / med['torch']:.2f}"
            print(line, flush=True)
    shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
