"""``python -m convx.bench --nets``: whole networks, convx against PyTorch eager and ONNX Runtime."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

from ... import _threads
from .. import _load
from ..runner import machine_info
from . import measure, models

# Issue 18's targets: convx's time over the other library's, medians.
TRAIN_TARGET = 0.8  # training step, against PyTorch eager
INFERENCE_TARGET = 1.0  # inference, against ONNX Runtime
# Relative errors (measure.relative_error) above FLAG are flagged; the issue asks for TARGET.
AGREEMENT_FLAG = 1e-4
AGREEMENT_TARGET = 1e-5
FLOAT64_TARGET = 1e-12
# Other processes' share of the CPUs (measure.OtherLoad) above which a net's timings are marked.
BUSY_MACHINE = _load.BUSY_MACHINE
QUIET_TIMEOUT = 600.0
DEFAULT_BATCH = 64
QUICK_BATCH = 8


def available(use_torch: bool, use_ort: bool) -> tuple[bool, bool, list[str]]:
    """Which comparison libraries can run, and a note for each that cannot."""
    notes = []
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            use_torch = False
            notes.append("PyTorch is not installed: no PyTorch timings or comparisons.")
    if use_ort:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            use_ort = False
            notes.append("onnx and onnxruntime are not both installed: no ONNX Runtime timings or comparisons.")
    return use_torch, use_ort, notes


def versions(info: dict[str, Any], use_ort: bool) -> None:
    """Add ONNX Runtime's and onnx's versions to the machine description."""
    info["onnxruntime"] = info["onnx"] = None
    if use_ort:
        import onnx
        import onnxruntime

        info["onnxruntime"], info["onnx"] = onnxruntime.__version__, onnx.__version__


def _ms(summary: dict[str, dict[str, float | int]], name: str) -> str:
    if name not in summary:
        return f"{'-':>22s}"
    entry = summary[name]
    text = f"{entry['median_s'] * 1e3:.2f} [{entry['min_s'] * 1e3:.2f}-{entry['max_s'] * 1e3:.2f}]"
    return f"{text:>22s}"


def _ratio(value: float | None, target: float | None = None) -> str:
    if value is None:
        return f"{'-':>12s}"
    verdict = "" if target is None else (" ok" if value <= target else " FAIL")
    return f"{value:7.2f}{verdict:5s}"


def _error(value: float | None, target: float | None = AGREEMENT_TARGET) -> str:
    """``value`` with * above ``target`` and !! above the flag (for float32 values)."""
    if value is None:
        return f"{'-':>10s}"
    mark = ""
    if target is not None:
        mark = "!!" if target == AGREEMENT_TARGET and value > AGREEMENT_FLAG else ("*" if value > target else "")
    return f"{value:8.1e}{mark:2s}"


def format_timings(results: list[dict[str, Any]]) -> str:
    header = (f"{'net':10s} {'step':9s} {'convx ms [min-max]':>22s} {'torch ms [min-max]':>22s} "
              f"{'ORT ms [min-max]':>22s} {'convx/torch':>12s} {'convx/ORT':>12s}")
    lines = [header, "-" * len(header)]
    for result in results:
        for step in ("train", "inference"):
            summary, ratios = result[step], result["ratios"]
            torch_ratio = ratios[f"{step}_convx_torch"]
            ort_ratio = ratios.get(f"{step}_convx_ort")
            lines.append(
                f"{result['net']:10s} {step:9s} {_ms(summary, 'convx')} {_ms(summary, 'torch')} {_ms(summary, 'ort')} "
                f"{_ratio(torch_ratio, TRAIN_TARGET if step == 'train' else None)} "
                f"{_ratio(ort_ratio, INFERENCE_TARGET if step == 'inference' else None)}"
            )
    lines.append(f"targets (issue 18): training step <= {TRAIN_TARGET:.2f}x PyTorch eager, "
                 f"inference <= {INFERENCE_TARGET:.2f}x ONNX Runtime (medians); ok/FAIL beside each ratio")
    loads = [f"{r['net']} {100 * r['other_load']:.0f}%" + (f" ({r['attempts']} attempts)" if r["attempts"] > 1 else "")
             for r in results if r["other_load"] is not None]
    if loads:
        busy = [r["net"] for r in results if r["other_load"] is not None and r["other_load"] > BUSY_MACHINE]
        lines.append(f"other processes' share of the CPUs while each net was timed (and profiled): {', '.join(loads)}"
                     + (f" (distrust {', '.join(busy)}: above {100 * BUSY_MACHINE:.0f}%)" if busy else ""))
    return "\n".join(lines)


def _over(result: dict[str, Any], bound: float) -> list[str]:
    """The float32 agreement values of one net above ``bound`` (gradients counted, the worst named)."""
    values = result["agreement"]
    scalars = ("inference_vs_torch", "inference_vs_ort", "train_logits", "loss", "weights_after_step")
    over = [f"{key} {values[key]:.1e}" for key in scalars if values[key] is not None and values[key] > bound]
    gradients = {name: value for name, value in values["gradients"].items() if value > bound}
    if gradients:
        worst = max(gradients, key=gradients.__getitem__)
        over.append(f"{len(gradients)} of {len(values['gradients'])} gradients, worst {worst} {gradients[worst]:.1e} "
                    f"(float32 against PyTorch's float64 gradients: convx {values['convx_float32_vs_float64']:.1e}, "
                    f"PyTorch {values['torch_float32_vs_float64']:.1e})")
    return [f"{result['net']}: {', '.join(over)}"] if over else []


def format_agreement(results: list[dict[str, Any]]) -> str:
    header = (f"{'':10s} {'float32, convx against PyTorch (and ONNX Runtime)':^69s} {'float64':>10s} "
              f"{'f32 grads vs f64':^21s}\n"
              f"{'net':10s} {'infer/torch':>11s} {'infer/ORT':>10s} {'logits':>10s} {'loss':>10s} "
              f"{'gradients':>10s} {'weights':>10s} {'all':>10s} {'convx':>10s} {'PyTorch':>10s}  worst f32 gradient")
    lines = [header, "-" * len(header.splitlines()[1])]
    for result in results:
        values = result["agreement"]
        lines.append(
            f"{result['net']:10s} {_error(values['inference_vs_torch']):>11s} {_error(values['inference_vs_ort'])} "
            f"{_error(values['train_logits'])} {_error(values['loss'])} {_error(values['worst_gradient'])} "
            f"{_error(values['weights_after_step'])} {_error(values['float64'], FLOAT64_TARGET)} "
            f"{_error(values['convx_float32_vs_float64'], None)} {_error(values['torch_float32_vs_float64'], None)}  "
            f"{values['worst_gradient_name'] or '-'}"
        )
    lines.append(
        "max|convx - other| / max|other| per tensor, from the same weights and batch. float32: inference (eval mode) "
        "against PyTorch and ONNX Runtime; one training step's logits, loss, every parameter gradient (the worst "
        "shown) and every weight after the SGD step, against PyTorch. float64: the worst of the step's logits, loss "
        "and gradients, convx against PyTorch. f32 grads vs f64: each library's worst float32 gradient against "
        "PyTorch's float64 one, the yardstick of the float32 gradient column (a single ReLU input near zero whose "
        "sign rounding flips moves these gradients by up to 1e-2). * above the issue's targets "
        f"({AGREEMENT_TARGET:.0e} float32, {FLOAT64_TARGET:.0e} float64), !! above {AGREEMENT_FLAG:.0e}"
    )
    flagged = [line for result in results for line in _over(result, AGREEMENT_FLAG)]
    lines.append(f"flagged, float32 above {AGREEMENT_FLAG:.0e}: {'; '.join(flagged) if flagged else 'none'}")
    above = [line for result in results for line in _over(result, AGREEMENT_TARGET)]
    above += [f"{r['net']}: float64 {r['agreement']['float64']:.1e} ({r['agreement']['float64_worst']})"
              for r in results if r["agreement"]["float64"] is not None and r["agreement"]["float64"] > FLOAT64_TARGET]
    lines.append(f"above the issue's targets: {'; '.join(above) if above else 'none'}")
    return "\n".join(lines)


def format_profile(result: dict[str, Any], repeat: int) -> str:
    rows = result["profile"]["convx"]
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        table.setdefault(row["layer"], {})[row["phase"]] = row["ms"]
    total = sum(row["ms"] for row in rows)
    lines = [f"convx training step of {result['net']} by layer type (self time, median ms per step over {repeat}):",
             f"  {'layer':22s} {'forward':>8s} {'backward':>8s} {'step':>8s} {'total':>8s} {'share':>6s}"]
    for label, phases in sorted(table.items(), key=lambda item: -sum(item[1].values())):
        cells = " ".join(f"{phases[p]:8.2f}" if p in phases else f"{'-':>8s}" for p in ("forward", "backward", "step"))
        layer_total = sum(phases.values())
        lines.append(f"  {label:22s} {cells} {layer_total:8.2f} {100 * layer_total / total:5.1f}%")
    lines.append(f"  {'sum':22s} {'':26s} {total:8.2f}")
    torch_rows = result["profile"].get("torch")
    if torch_rows:
        lines.append(f"PyTorch's training step of {result['net']}, costliest operators (torch.profiler self CPU ms "
                     "per step, profiler overhead included):")
        lines += [f"  {row['op']:40s} {row['ms']:8.2f}  ({row['calls']:g} calls)" for row in torch_rows]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("train_convx_torch", "training step, convx / PyTorch", "tab:blue"),
            ("inference_convx_torch", "inference, convx / PyTorch", "tab:cyan"),
            ("inference_convx_ort", "inference, convx / ONNX Runtime", "tab:orange")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(bars)
    for offset, (key, label, color) in enumerate(bars):
        points = [(i, r["ratios"][key]) for i, r in enumerate(results) if r["ratios"].get(key) is not None]
        if points:
            positions, values = zip(*points)
            drawn = ax.bar([p + (offset - 1) * width for p in positions], values, width, label=label, color=color)
            ax.bar_label(drawn, fmt="%.2f", fontsize=6)
    ax.axhline(TRAIN_TARGET, color="tab:blue", linestyle="--", linewidth=0.8, label=f"training target {TRAIN_TARGET}")
    ax.axhline(INFERENCE_TARGET, color="black", linewidth=0.8, label=f"inference target {INFERENCE_TARGET} (parity)")
    ax.set_xticks(range(len(results)), [r["net"] for r in results])
    ax.set_yscale("log")
    ax.set_ylabel("time convx / time other (lower is better, log scale)")
    ax.set_title(textwrap.fill(title, 110), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _time_and_profile(net: models.Net, batch_size: int, threads: int, repeat: int, use_torch: bool,
                      use_ort: bool, profile: bool) -> dict[str, Any]:
    """The timings (and the profile) of one net, with the other processes' share of the CPUs meanwhile."""
    load = measure.OtherLoad()
    train, inference = measure.time_net(net, batch_size, threads, repeat, use_torch, use_ort)
    result: dict[str, Any] = {
        "train": train.summary(),
        "inference": inference.summary(),
        "ratios": {"train_convx_torch": train.ratio("convx", "torch"),
                   "inference_convx_torch": inference.ratio("convx", "torch"),
                   "inference_convx_ort": inference.ratio("convx", "ort")},
    }
    if profile:
        result["profile"] = {"convx": measure.profile_convx(net, batch_size, repeat)["rows"]}
        if use_torch:
            result["profile"]["torch"] = measure.profile_torch(net, batch_size, repeat)
    result["other_load"] = load.fraction()
    return result


def run(net_names: list[str] | None, batch_size: int | None, repeat: int | None, quick: bool, use_torch: bool,
        use_ort: bool, profile: bool, json_path: str | None, plot_path: str | None, command: list[str],
        retries: int = 0) -> int:
    """Time and compare the nets; print the tables; write JSON and the plot if asked. Returns 0.

    A net timed while other processes took more than ``BUSY_MACHINE`` of the CPUs is timed again,
    up to ``retries`` times, each after waiting (up to ``QUIET_TIMEOUT`` seconds) for them to
    quieten; the least disturbed attempt is kept.
    """
    threads = _threads.get_num_threads()
    use_torch, use_ort, notes = available(use_torch, use_ort)
    for note in notes:
        print(note, file=sys.stderr)
    if use_torch:
        import torch

        torch.set_num_threads(threads)
    batch_size = batch_size or (QUICK_BATCH if quick else DEFAULT_BATCH)
    repeat = repeat or (3 if quick else 7)
    nets = [models.NETS[name] for name in net_names] if net_names else list(models.NETS.values())

    info = machine_info()
    versions(info, use_ort)
    setting = (f"batch {batch_size}, {threads} threads each (convx, torch.set_num_threads, ORT intra-op; ORT "
               f"inter-op 1, sequential), medians of {repeat} interleaved runs")
    machine = (f"convx {info['convx']} (OpenMP {'on' if info['convx_openmp'] else 'OFF'}); {info['cpu']} "
               f"(family {info.get('cpu_family')} model {info.get('cpu_model_number')}, {info.get('cpu_simd')}), "
               f"{info['cores']} cores; numpy {info['numpy']}; torch {info['torch']}; "
               f"onnxruntime {info['onnxruntime']}")
    print(f"{machine}\n{setting}", file=sys.stderr)
    results = []
    for index, net in enumerate(nets, 1):
        print(f"[{index}/{len(nets)}] {net.name}: {net.description}", file=sys.stderr, flush=True)
        agreement = measure.compare(net, batch_size, threads, use_torch, use_ort)
        worst = agreement.worst_gradient()
        result: dict[str, Any] = {
            "net": net.name,
            "description": net.description,
            "input_shape": [batch_size, *net.image_shape],
            "parameters": models.count_parameters(models.convx_model(net)),
            "agreement": agreement.values() | {"worst_gradient_name": None if worst is None else worst[0],
                                               "float64_worst": agreement.float64_worst,
                                               "gradients": agreement.gradients},
        }
        attempts = []
        for attempt in range(1 + retries):
            attempts.append(_time_and_profile(net, batch_size, threads, repeat, use_torch, use_ort, profile))
            other_load = attempts[-1]["other_load"]
            if other_load is None or other_load <= BUSY_MACHINE or attempt == retries:
                break
            print(f"  other processes took {100 * other_load:.0f}% of the CPUs: timing {net.name} again once "
                  "they are quiet", file=sys.stderr, flush=True)
            measure.wait_for_quiet(BUSY_MACHINE, QUIET_TIMEOUT)
        # The attempt least disturbed by other processes.
        result |= min(attempts, key=lambda a: a["other_load"] if a["other_load"] is not None else 0.0)
        result["attempts"] = len(attempts)
        ratios = result["ratios"]
        result["targets_met"] = {
            "train": None if ratios["train_convx_torch"] is None else ratios["train_convx_torch"] <= TRAIN_TARGET,
            "inference": None if ratios["inference_convx_ort"] is None
            else ratios["inference_convx_ort"] <= INFERENCE_TARGET,
        }
        results.append(result)

    print(" ".join(command))
    print(machine)
    print(f"Whole networks, {setting}.")
    print(format_timings(results))
    print()
    print(format_agreement(results))
    if profile:
        for result in results:
            print()
            print(format_profile(result, repeat))

    if json_path:
        payload = {"mode": "nets", "machine": info, "threads": threads, "batch": batch_size, "repeat": repeat,
                   "quick": quick, "command": command, "targets": {"train_convx_torch": TRAIN_TARGET,
                                                                     "inference_convx_ort": INFERENCE_TARGET,
                                                                     "agreement": AGREEMENT_TARGET,
                                                                     "agreement_float64": FLOAT64_TARGET},
                   "notes": notes, "nets": results}
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {json_path}", file=sys.stderr)
    if plot_path:
        plot(results, plot_path, f"{machine}; {setting}")
        print(f"wrote {plot_path}", file=sys.stderr)
    return 0
