"""Element-wise layers against the memory yardstick of issue 18: each layer's forward and
backward time over a one-thread copy of the bytes it must read and write (``np.copyto`` of
(read + write) / 2 bytes: a copy reads and writes as many as it copies), and PyTorch's time for
the same layer when it is installed.

The targets: an activation's (or Dropout's) forward and backward each within 1.5x of its copy,
BatchNorm2d's training forward + backward within 3x of theirs.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _threads, nn

#: (layer name, constructor, arrays read and written by the forward, by the backward, target).
#: An activation's forward reads x and writes y; its backward reads grad_out and the one array it
#: kept (x or y) and writes grad_x. BatchNorm2d must read x and write y, then read grad_out and x
#: and write grad_x (statistics and sums ride on those passes at best).
LAYERS: list[tuple[str, Callable[[], Any], int, int, float]] = [
    ("ReLU", lambda: nn.ReLU(), 2, 3, 1.5),
    ("ReLU6", lambda: nn.ReLU6(), 2, 3, 1.5),
    ("LeakyReLU", lambda: nn.LeakyReLU(0.1), 2, 3, 1.5),
    ("ELU", lambda: nn.ELU(), 2, 3, 1.5),
    ("SELU", lambda: nn.SELU(), 2, 3, 1.5),
    ("Sigmoid", lambda: nn.Sigmoid(), 2, 3, 1.5),
    ("Tanh", lambda: nn.Tanh(), 2, 3, 1.5),
    ("SiLU", lambda: nn.SiLU(), 2, 3, 1.5),
    ("GELU", lambda: nn.GELU(), 2, 3, 1.5),
    ("Hardswish", lambda: nn.Hardswish(), 2, 3, 1.5),
    ("Hardsigmoid", lambda: nn.Hardsigmoid(), 2, 3, 1.5),
    ("Softplus", lambda: nn.Softplus(), 2, 3, 1.5),
    ("Dropout", lambda: nn.Dropout(0.5, rng=0), 2, 2, 1.5),
    ("BatchNorm2d", None, 2, 3, 3.0),
]

TORCH_NAMES = {"BatchNorm2d": None}


@dataclasses.dataclass
class LayerResult:
    name: str
    forward: float
    backward: float
    copy_forward: float
    copy_backward: float
    torch_forward: float | None
    torch_backward: float | None
    target: float

    @property
    def ratios(self) -> tuple[float, float, float]:
        """forward / its copy, backward / its copy, (forward + backward) / (both copies)."""
        return (self.forward / self.copy_forward, self.backward / self.copy_backward,
                (self.forward + self.backward) / (self.copy_forward + self.copy_backward))

    @property
    def meets_target(self) -> bool:
        forward, backward, both = self.ratios
        if self.name == "BatchNorm2d":
            return both <= self.target
        return forward <= self.target and backward <= self.target


def _median_time(function: Callable[[], Any], repeat: int) -> float:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _copy_time(n_bytes: int, repeat: int) -> float:
    source = np.ones(max(1, n_bytes // 4), dtype=np.float32)
    target = np.empty_like(source)
    return _median_time(lambda: np.copyto(target, source), repeat)


def run_layers(shape: tuple[int, ...] = (64, 32, 32, 32), repeat: int = 11, threads: int | None = None,
               torch: Any = None) -> list[LayerResult]:
    """Time every layer of :data:`LAYERS` on a float32 array of ``shape`` (training mode)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    previous = _threads.get_num_threads()
    if threads is not None:
        _threads.set_num_threads(threads)
    results = []
    try:
        for name, make, arrays_forward, arrays_backward, target in LAYERS:
            layer = nn.BatchNorm2d(shape[1]) if make is None else make()
            forward = _median_time(lambda: layer(x), repeat)

            def forward_backward() -> None:
                layer(x)
                layer.backward(grad)

            backward = max(_median_time(forward_backward, repeat) - forward, 1e-9)
            torch_forward = torch_backward = None
            if torch is not None:
                torch_forward, torch_backward = _torch_times(torch, name, x, grad, repeat)
            results.append(LayerResult(
                name, forward, backward, _copy_time(x.nbytes * arrays_forward // 2, repeat),
                _copy_time(x.nbytes * arrays_backward // 2, repeat), torch_forward, torch_backward, target,
            ))
    finally:
        _threads.set_num_threads(previous)
    return results


def _torch_times(torch: Any, name: str, x: np.ndarray, grad: np.ndarray, repeat: int) -> tuple[float, float]:
    module = torch.nn.BatchNorm2d(x.shape[1]) if name == "BatchNorm2d" else {
        "ReLU": torch.nn.ReLU(), "ReLU6": torch.nn.ReLU6(), "LeakyReLU": torch.nn.LeakyReLU(0.1),
        "ELU": torch.nn.ELU(), "SELU": torch.nn.SELU(), "Sigmoid": torch.nn.Sigmoid(), "Tanh": torch.nn.Tanh(),
        "SiLU": torch.nn.SiLU(), "GELU": torch.nn.GELU(), "Hardswish": torch.nn.Hardswish(),
        "Hardsigmoid": torch.nn.Hardsigmoid(), "Softplus": torch.nn.Softplus(), "Dropout": torch.nn.Dropout(0.5),
    }[name]
    leaf = torch.from_numpy(x).requires_grad_(True)
    grad_tensor = torch.from_numpy(grad)
    with torch.no_grad():
        forward = _median_time(lambda: module(leaf), repeat)

    def forward_backward() -> None:
        module(leaf).backward(grad_tensor)

    return forward, max(_median_time(forward_backward, repeat) - forward, 1e-9)


def format_layers(results: list[LayerResult], shape: tuple[int, ...], threads: int) -> str:
    lines = [
        f"Element-wise layers on float32 {shape}, training mode, convx on {threads} thread(s); ms, medians. "
        "copy: np.copyto of the bytes the pass must read and write (one thread).",
        f"{'layer':12s} {'forward':>8s} {'copy':>6s} {'ratio':>6s} {'backward':>9s} {'copy':>6s} {'ratio':>6s} "
        f"{'torch f':>8s} {'torch b':>8s}  target",
    ]
    for r in results:
        forward, backward, both = r.ratios
        torch_f = "-" if r.torch_forward is None else f"{r.torch_forward * 1e3:.2f}"
        torch_b = "-" if r.torch_backward is None else f"{r.torch_backward * 1e3:.2f}"
        target = (f"f+b <= {r.target}x copy: {both:.2f} " if r.name == "BatchNorm2d"
                  else f"each <= {r.target}x copy ")
        lines.append(
            f"{r.name:12s} {r.forward * 1e3:8.2f} {r.copy_forward * 1e3:6.2f} {forward:6.2f} "
            f"{r.backward * 1e3:9.2f} {r.copy_backward * 1e3:6.2f} {backward:6.2f} {torch_f:>8s} {torch_b:>8s}  "
            f"{target}{'ok' if r.meets_target else 'FAIL'}"
        )
    return "\n".join(lines)
