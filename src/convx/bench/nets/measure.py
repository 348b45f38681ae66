"""Training steps and inference of one net in convx, PyTorch and ONNX Runtime: agreement and time."""

from __future__ import annotations

import copy
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import nn, optim
from ...nn.module import Module, no_grad
from .._load import OtherLoad, spread, wait_for_quiet  # noqa: F401 (report.py and tests use them from here)
from . import models
from .onnx_graph import ort_session, to_onnx

LEARNING_RATE = 0.01
MOMENTUM = 0.9


def relative_error(value: Any, reference: Any) -> float:
    """``max|value - reference| / max|reference|``: the error on the scale of the whole tensor
    (an element-wise ratio would blow up wherever the reference crosses zero)."""
    value, reference = np.asarray(value, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    scale = np.abs(reference).max()
    return float(np.abs(value - reference).max() / scale) if scale > 0 else float(np.abs(value).max())


# -- one step of each library -----------------------------------------------------------------


class ConvxTrainer:
    """convx's training step: forward, cross-entropy, backward, SGD with momentum."""

    def __init__(self, model: Module, x: np.ndarray, target: np.ndarray) -> None:
        self.model, self.x, self.target = model.train(), x, target
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.target)
        self.model.backward(self.loss_fn.backward())
        self.optimizer.step()
        return loss


class TorchTrainer:
    """PyTorch eager's training step, the same."""

    def __init__(self, model: Any, x: np.ndarray, target: np.ndarray) -> None:
        import torch

        self.model = model.train()
        self.x, self.target = torch.from_numpy(x), torch.from_numpy(target)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.target)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def torch_inference(model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    import torch

    model.eval()
    x_torch = torch.from_numpy(x)

    def run() -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = model(x_torch).numpy()
        return result

    return run


def ort_inference(session: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        result: np.ndarray = session.run(None, {"x": x})[0]
        return result

    return run


def convx_inference(model: Module, x: np.ndarray) -> Callable[[], np.ndarray]:
    model.eval()

    def run() -> np.ndarray:
        # As PyTorch's inference_mode: nothing kept for a backward.
        with no_grad():
            return model(x)

    return run


# -- agreement --------------------------------------------------------------------------------


@dataclass
class Agreement:
    """Relative errors (:func:`relative_error`) of convx against PyTorch and ONNX Runtime, from
    identical weights and batch; None where the other library is missing.

    float32: inference (evaluation mode) against PyTorch and ONNX Runtime; one training step's
    logits, loss, every parameter gradient (``gradients``) and every weight after the SGD step
    against PyTorch. float64: the worst of the training step's logits, loss and gradients,
    convx against PyTorch, both in float64. And how far each library's float32 gradients are
    from PyTorch's float64 ones: float32 gradients of these nets move by up to 1e-2 when a single
    pre-activation near zero changes sign under rounding (ReLU's mask flips), so the float32
    difference between two libraries means little without its yardstick, PyTorch's own.
    """

    inference_vs_torch: float | None = None
    inference_vs_ort: float | None = None
    train_logits: float | None = None
    loss: float | None = None
    gradients: dict[str, float] = field(default_factory=dict)
    weights_after_step: float | None = None
    float64: float | None = None
    float64_worst: str | None = None
    convx_float32_vs_float64: float | None = None
    torch_float32_vs_float64: float | None = None

    def worst_gradient(self) -> tuple[str, float] | None:
        if not self.gradients:
            return None
        name = max(self.gradients, key=self.gradients.__getitem__)
        return name, self.gradients[name]

    def values(self) -> dict[str, float | None]:
        """Every measured error by label (the worst gradient stands for all of them)."""
        worst = self.worst_gradient()
        return {"inference_vs_torch": self.inference_vs_torch, "inference_vs_ort": self.inference_vs_ort,
                "train_logits": self.train_logits, "loss": self.loss,
                "worst_gradient": None if worst is None else worst[1],
                "weights_after_step": self.weights_after_step, "float64": self.float64,
                "convx_float32_vs_float64": self.convx_float32_vs_float64,
                "torch_float32_vs_float64": self.torch_float32_vs_float64}


@dataclass
class _Step:
    """What one forward and backward gave: logits, loss and every parameter gradient by name."""

    logits: np.ndarray
    loss: float
    gradients: dict[str, np.ndarray]


def _convx_step(model: Module, x: np.ndarray, target: np.ndarray) -> _Step:
    loss_fn = nn.CrossEntropyLoss()
    logits = model.train()(x)
    loss = loss_fn(logits, target)
    model.backward(loss_fn.backward())
    gradients = {param.name: param.grad for param in model.parameters() if param.grad is not None}
    return _Step(logits, loss, gradients)


def _torch_step(model: Any, x: np.ndarray, target: np.ndarray) -> _Step:
    import torch

    model.train().zero_grad()
    logits = model(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(target))
    loss.backward()
    gradients = {name: param.grad.numpy() for name, param in model.named_parameters() if param.grad is not None}
    return _Step(logits.detach().numpy(), float(loss.detach()), gradients)


def _worst(values: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> tuple[float, str]:
    assert values.keys() == references.keys(), (sorted(values), sorted(references))
    return max((relative_error(values[name], references[name]), name) for name in references)


def compare(net: models.Net, batch_size: int, threads: int, use_torch: bool, use_ort: bool,
            seed: int = 0) -> Agreement:
    """Inference (evaluation mode), then one training step, in each library from the same state."""
    x, target = models.batch(net, batch_size, seed)
    result = Agreement()
    torch_model = models.torch_model(net, seed) if use_torch else None
    convx_model = models.convx_copy_of(torch_model, net) if use_torch else models.convx_initial_model(net, seed)
    convx_logits = convx_inference(convx_model, x)()
    if use_ort:
        session = ort_session(to_onnx(convx_model, x.shape), threads)
        result.inference_vs_ort = relative_error(convx_logits, ort_inference(session, x)())
    if torch_model is None:
        return result
    import torch

    result.inference_vs_torch = relative_error(convx_logits, torch_inference(torch_model, x)())
    torch_float64 = copy.deepcopy(torch_model).double()  # before training mode moves the running statistics

    ours, theirs = _convx_step(convx_model, x, target), _torch_step(torch_model, x, target)
    result.train_logits = relative_error(ours.logits, theirs.logits)
    result.loss = relative_error(ours.loss, theirs.loss)
    assert ours.gradients.keys() == theirs.gradients.keys()
    result.gradients = {name: relative_error(ours.gradients[name], theirs.gradients[name]) for name in ours.gradients}
    our_optimizer = optim.SGD(convx_model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    their_optimizer = torch.optim.SGD(torch_model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    our_optimizer.step()
    their_optimizer.step()
    with torch.no_grad():
        their_weights = {name: param.numpy() for name, param in torch_model.named_parameters()}
        result.weights_after_step = _worst({p.name: p.data for p in convx_model.parameters()}, their_weights)[0]

    x64 = x.astype(np.float64)
    ours64 = _convx_step(models.convx_copy_of(torch_float64, net), x64, target)
    theirs64 = _torch_step(torch_float64, x64, target)
    result.float64, result.float64_worst = max(
        (relative_error(ours64.logits, theirs64.logits), "logits"),
        (relative_error(ours64.loss, theirs64.loss), "loss"),
        _worst(ours64.gradients, theirs64.gradients),
    )
    result.convx_float32_vs_float64 = _worst(ours.gradients, theirs64.gradients)[0]
    result.torch_float32_vs_float64 = _worst(theirs.gradients, theirs64.gradients)[0]
    return result


# -- time -------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of each library (``'convx'``, ``'torch'``, ``'ort'``), all runs kept."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float | None:
        runs = self.samples.get(name)
        return statistics.median(runs) if runs else None

    def ratio(self, numerator: str, denominator: str) -> float | None:
        top, bottom = self.median(numerator), self.median(denominator)
        return top / bottom if top is not None and bottom is not None else None

    def summary(self) -> dict[str, dict[str, float | int]]:
        out: dict[str, dict[str, float | int]] = {}
        for name, runs in self.samples.items():
            out[name] = spread(runs)
        return out


# Untimed calls of a library, for at least this long, before each of its timed calls.
LEAD_IN_SECONDS = 0.02


def round_robin(calls: dict[str, Callable[[], object]], repeat: int, warmup: int = 2) -> Timing:
    """Time every call ``repeat`` times, taking turns within each repetition (so that slow drifts
    of a shared machine hit all alike), after ``warmup`` untimed rounds.

    Each timed call follows untimed calls of the same library lasting ``LEAD_IN_SECONDS`` (at
    least one call), as one training step follows another in a loop. Without them, a library
    would be timed while the previous library's idle OpenMP threads still spin (GNU libgomp's,
    which convx and PyTorch each load, spin for milliseconds after a parallel region before
    they sleep) and take one of its cores: on two cores, ONNX Runtime's VGG inference took 25%
    longer right after PyTorch's or convx's than right after its own. A pause instead of the
    lead-in does not do: an idle virtual CPU wakes slowly (LeNet-5's 1.6 ms took 13 ms after
    50 ms of sleep).
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            lead_in_end = time.perf_counter() + LEAD_IN_SECONDS
            call()
            while time.perf_counter() < lead_in_end:
                call()
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return Timing(samples)


def time_net(net: models.Net, batch_size: int, threads: int, repeat: int, use_torch: bool, use_ort: bool,
             seed: int = 0) -> tuple[Timing, Timing]:
    """(training step, inference) timings of ``net`` in each available library."""
    x, target = models.batch(net, batch_size, seed)
    torch_model = models.torch_model(net, seed) if use_torch else None
    convx_model = models.convx_copy_of(torch_model, net) if use_torch else models.convx_initial_model(net, seed)
    inference: dict[str, Callable[[], object]] = {"convx": convx_inference(convx_model, x)}
    if torch_model is not None:
        inference["torch"] = torch_inference(torch_model, x)
    if use_ort:
        inference["ort"] = ort_inference(ort_session(to_onnx(convx_model, x.shape), threads), x)
    inference_timing = round_robin(inference, repeat)

    train: dict[str, Callable[[], object]] = {"convx": ConvxTrainer(convx_model, x, target).step}
    if torch_model is not None:
        train["torch"] = TorchTrainer(torch_model, x, target).step
    return round_robin(train, repeat), inference_timing


# -- where convx's training step spends its time ----------------------------------------------


def layer_label(module: Module) -> str:
    """A profile row: the layer type, with the convolution's kernel and depthwise-ness."""
    if isinstance(module, nn.Conv2d):
        height, width = module.kernel_size
        depthwise = " depthwise" if module.groups > 1 and module.groups == module.in_channels else ""
        return f"Conv2d {height}x{width}{depthwise}"
    if isinstance(module, models.Residual):
        return "Residual (add)"
    if isinstance(module, nn.Sequential):
        return "Sequential (Python)"
    return type(module).__name__


class _SelfTimer:
    """Adds each wrapped call's own time (its time minus that of the wrapped calls inside it)
    to ``totals[label, phase]``."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self._inner: list[float] = []

    def wrap(self, label: str, phase: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                self.totals[label, phase] += elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed

        return timed


def _fused_timer(timer: _SelfTimer, label: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` (Conv2d._convolve or BatchNorm2d._normalize) timed under ``label``, or under
    ``label + activation`` when nn.Sequential passes it an activation to apply."""
    plain = timer.wrap(label, "forward", call)
    fused: dict[str, Callable[..., Any]] = {}

    def timed(x: Any, *args: Any, **kwargs: Any) -> Any:
        activation = args[2] if call.__name__ == "_convolve" and len(args) > 2 else (
            args[0] if call.__name__ == "_normalize" and args else None)
        if activation is None:
            return plain(x, *args, **kwargs)
        if activation not in fused:
            fused[activation] = timer.wrap(f"{label} + {activation} (fused)", "forward", call)
        return fused[activation](x, *args, **kwargs)

    return timed


def profile_convx(net: models.Net, batch_size: int, repeat: int, seed: int = 0) -> dict[str, Any]:
    """convx's training step by layer type: median milliseconds per step of each (label, phase),
    phases forward, backward, step (the optimizer); self time, so the rows add up to the step.

    Every module's ``forward`` and ``backward`` (and the loss's and the optimizer's) are wrapped
    on the instances of a model of its own, so the timed models of :func:`time_net` carry no
    timers.
    """
    x, target = models.batch(net, batch_size, seed)
    trainer = ConvxTrainer(models.convx_initial_model(net, seed), x, target)
    timer = _SelfTimer()
    for module in models.modules(trainer.model):
        label = layer_label(module)
        # Instance attributes shadow the class's methods: Module.__call__ and Sequential find these.
        setattr(module, "forward", timer.wrap(label, "forward", module.forward))
        setattr(module, "backward", timer.wrap(label, "backward", module.backward))
        # nn.Sequential runs fused groups through these (a Conv2d with its BatchNorm2d folded in
        # and an activation, a BatchNorm2d with an activation): their time goes to a fused label.
        for method in ("_convolve", "_normalize"):
            if hasattr(module, method):
                setattr(module, method, _fused_timer(timer, label, getattr(module, method)))
    setattr(trainer.loss_fn, "forward", timer.wrap("CrossEntropyLoss", "forward", trainer.loss_fn.forward))
    setattr(trainer.loss_fn, "backward", timer.wrap("CrossEntropyLoss", "backward", trainer.loss_fn.backward))
    setattr(trainer.optimizer, "step", timer.wrap("SGD", "step", trainer.optimizer.step))
    step = timer.wrap("(rest of the step)", "step", trainer.step)

    trainer.step()
    per_step: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(repeat):
        timer.totals.clear()
        step()
        for key, seconds in timer.totals.items():
            per_step[key].append(seconds)
    rows = [{"layer": label, "phase": phase, "ms": 1e3 * statistics.median(values)}
            for (label, phase), values in per_step.items()]
    return {"rows": sorted(rows, key=lambda row: -row["ms"])}


def profile_torch(net: models.Net, batch_size: int, repeat: int, top: int = 12, seed: int = 0) -> list[dict[str, Any]]:
    """PyTorch's training step by operator (``torch.profiler``): self CPU milliseconds per step of
    the ``top`` most expensive."""
    from torch.profiler import ProfilerActivity, profile

    x, target = models.batch(net, batch_size, seed)
    trainer = TorchTrainer(models.torch_model(net, seed), x, target)
    trainer.step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeat):
            trainer.step()
    events = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)[:top]
    return [{"op": event.key, "ms": event.self_cpu_time_total / 1e3 / repeat, "calls": event.count / repeat}
            for event in events]
