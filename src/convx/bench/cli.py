"""The command line of ``python -m convx.bench``: time convx against pure NumPy and PyTorch on the same machine, in one run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap

from .. import _threads
from . import _load
from .cases import CASES, CASES_3D, QUICK_BATCH, quick
from .implementations import LAYOUTS, winograd_applies
from . import layers as layer_bench
from .nets import models as net_models
from .nets import report as net_report
from .runner import (Result, calibration, extra_memory, fused_backward, gemm_ceiling, machine_info, merge_passes,
                     reuse_freed_memory, settle, thread_scaling, time_case)
from .table import WIDTH, Trust, format_table, summary

ALL_OPS = ("forward", "backward_input", "backward_weight", "backward")
REPEAT = 7
# --quick: 6 runs per op in 3 passes over the cases, so that a state of the machine lasting less than
# a pass (seconds) moves one op's median little. On the idle Xeon (family 6 model 167, 2 threads),
# four runs of each alternating, the (case, op, library) medians outside ±15% of their three-run
# median, over the four choices of three runs: 5 runs back to back 19-32 of 150, 3 passes of 2
# 3-7 (4 of those the NumPy reference's, then timed in the first pass only; now in every pass).
QUICK_REPEAT = 6
QUICK_PASSES = 3
# --quick's budget per op for the NumPy reference: this much in all, spread over the passes (at least
# one call in the first; none in later ones once spent): its slowest calls take seconds.
QUICK_REFERENCE_SECONDS = 0.5


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m convx.bench",
        description="Benchmark convx against its pure-NumPy reference and PyTorch (when installed).",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"batch {QUICK_BATCH}, {QUICK_REPEAT} repetitions (the NumPy reference: as many as fit in "
                             f"{QUICK_REFERENCE_SECONDS:g} s, at least one): a check in under a minute")
    parser.add_argument("--suite", choices=("2d", "3d"), default="2d",
                        help="the layers timed: 2d, the image layers of classic CNNs (the default), or 3d, "
                             "volume layers (C3D, 3-D U-Net, a strided stem, depthwise, pointwise, max pools)")
    parser.add_argument("--case", action="append", choices=sorted({**CASES, **CASES_3D}),
                        help="only this case (repeatable; of the --suite chosen)")
    parser.add_argument("--op", action="append", choices=ALL_OPS, help="only this op (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="threads for convx and PyTorch (default: convx's)")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"timed runs per op (median and spread reported; default {REPEAT})")
    parser.add_argument("--passes", type=int, default=None,
                        help=f"spread each op's runs over this many passes over the cases (default "
                             f"{QUICK_PASSES} with --quick, else 1)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the pure-NumPy reference")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-winograd", action="store_true",
                        help="skip convx's algorithm='winograd' on the 3x3 stride-1 cases")
    parser.add_argument("--layout", choices=LAYOUTS, default="NCHW",
                        help="convx's data layout: NCHW (channels first, the default) or NHWC (channels last: "
                             "inputs made (N, H, W, C) before timing, weights unchanged; PyTorch in "
                             "torch.channels_last); 'both' times convx in both, interleaved, and compares their "
                             "outputs and times (issue 20's target: NHWC at most 1.05x NCHW)")
    parser.add_argument("--memory", action="store_true", help="also report convx's extra memory at batch N and 4N")
    parser.add_argument("--ceiling", action="store_true",
                        help="also time numpy's GEMM on each convolution's forward product (the im2col ceiling), "
                             "convx's forward with one thread (the thread scaling), the fused backward against "
                             "the three separate calls, and a copy of each pooling op's bytes (the memory-speed "
                             "yardstick)")
    parser.add_argument("--wide", action="store_true",
                        help="a wider table: full op names and convx's algorithm='winograd' beside the default")
    parser.add_argument("--json", metavar="FILE",
                        help="write results (every run of every op), machine information and the load as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the comparison as a bar chart (needs matplotlib)")
    parser.add_argument("--fresh-pages", action="store_true",
                        help="leave glibc's allocator as it is: by default the single-op, --tune and --layers "
                             "runs keep freed memory for reuse, so that no library's calls pay for first touches "
                             "of new pages that another's frees caused (see convx.bench.runner.reuse_freed_memory)")
    nets = parser.add_argument_group(
        "whole networks",
        "--nets times whole networks instead of single ops: the training step (forward, cross-entropy, "
        "backward, SGD with momentum) and inference, against PyTorch eager with the same weights and "
        "ONNX Runtime (CPU, same threads), where installed, and compares their outputs and gradients",
    )
    nets.add_argument("--nets", action="store_true", help="benchmark whole networks (see above)")
    nets.add_argument("--net", action="append", choices=sorted(net_models.NETS), help="only this net (repeatable)")
    nets.add_argument("--batch", type=int, default=None,
                      help=f"images per batch (default {net_report.DEFAULT_BATCH}; "
                           f"{net_report.QUICK_BATCH} with --quick)")
    nets.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime even if installed")
    nets.add_argument("--profile", action="store_true",
                      help="also break convx's training step down by layer type, and PyTorch's by operator")
    nets.add_argument("--retry-busy", type=int, default=0, metavar="N",
                      help="time a net again, up to N times, if other processes took more than "
                           f"{100 * net_report.BUSY_MACHINE:.0f}%% of the CPUs meanwhile, after waiting for them to "
                           "quieten (Linux; the least disturbed attempt is kept)")
    parser.add_argument("--layers", action="store_true",
                        help="time the element-wise layers (activations, Dropout, BatchNorm2d) forward and backward "
                             "against a one-thread copy of the bytes each must read and write (issue 18's yardstick) "
                             "and PyTorch's layers")
    tune = parser.add_argument_group(
        "kernel choice",
        "--tune times every implementation of each convolution op (interleaved, medians) against the one "
        "the built-in rules choose and the one the autotuner (convx.set_autotune) chooses on a first call",
    )
    tune.add_argument("--tune", action="store_true", help="compare the implementations of each convolution op")
    tune.add_argument("--save-tuning", action="store_true",
                      help="with --tune: keep each op's fastest implementation as its autotune choice and save "
                           "the choices to convx.autotune_path() (loaded by CONVX_AUTOTUNE=1)")
    args = parser.parse_args(argv)
    if args.save_tuning and not args.tune:
        parser.error("--save-tuning needs --tune")
    if args.tune and (args.nets or args.layers):
        parser.error("--tune is a separate benchmark: run it without --nets / --layers")
    if args.layers and args.nets:
        parser.error("--layers and --nets are separate benchmarks: run one at a time")
    if args.layout != "NCHW" and (args.tune or args.layers):
        parser.error(f"--layout {args.layout}: the single-op benchmark's option, not for --tune / --layers")
    if args.suite == "3d":
        others = [name for name in args.case or () if name not in CASES_3D]
        if others:
            parser.error(f"--case {', '.join(others)}: not in --suite 3d (its cases: {', '.join(CASES_3D)})")
        for option, given in (("--layout", args.layout != "NCHW"), ("--ceiling", args.ceiling), ("--tune", args.tune),
                              ("--nets", args.nets), ("--layers", args.layers)):
            if given:
                parser.error(f"{option} is not available with --suite 3d (channels-first volumes, single ops)")
    elif args.case and (others := [name for name in args.case if name not in CASES]):
        parser.error(f"--case {', '.join(others)}: a --suite 3d case")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, got {args.threads}")
    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat must be positive, got {args.repeat}")
    if args.passes is not None and args.passes < 1:
        parser.error(f"--passes must be positive, got {args.passes}")
    if args.batch is not None and args.batch < 2:
        parser.error(f"--batch must be at least 2 (BatchNorm's batch statistics), got {args.batch}")
    op_options = {"--case": args.case, "--op": args.op, "--memory": args.memory, "--ceiling": args.ceiling,
                  "--no-numpy": args.no_numpy, "--no-winograd": args.no_winograd, "--wide": args.wide,
                  "--layout": args.layout != "NCHW"}
    if args.retry_busy < 0:
        parser.error(f"--retry-busy must be at least 0, got {args.retry_busy}")
    net_options = {"--net": args.net, "--batch": args.batch, "--no-onnx": args.no_onnx, "--profile": args.profile,
                   "--retry-busy": args.retry_busy}
    if args.nets and any(op_options.values()):
        parser.error(f"{', '.join(k for k, v in op_options.items() if v)}: single-op options, not for --nets")
    if not args.nets and any(net_options.values()):
        parser.error(f"{', '.join(k for k, v in net_options.items() if v)} need --nets")
    return args


def plot(results: list[Result], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.case}\n{r.op}" for r in results]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(results)), 8), sharex=True)
    for ax, (num, den, title) in zip(
        axes,
        [("convx", "torch", "time convx / time PyTorch (lower is better, 1 = parity)"),
         ("numpy", "convx", "speed-up of convx over pure NumPy (higher is better)")],
    ):
        values = [r.ratio(num, den) or 0.0 for r in results]
        ax.bar(range(len(values)), values, color="tab:blue" if num == "convx" else "tab:green")
        if num == "convx":
            winograd = [(i, x) for i, r in enumerate(results) if (x := r.ratio("winograd", "torch"))]
            if winograd:
                ax.plot(*zip(*winograd), "o", color="tab:orange", label="algorithm='winograd'")
                ax.legend(loc="upper right", fontsize=8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.set_yscale("log" if num == "numpy" else "linear")
    axes[-1].set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_layers(args, threads: int) -> int:
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            print("PyTorch is not installed: timing convx alone.", file=sys.stderr)
    shape = (8, 32, 32, 32) if args.quick else (64, 32, 32, 32)
    repeat = args.repeat or (3 if args.quick else 11)
    results = layer_bench.run_layers(shape, repeat, threads, torch)
    print(layer_bench.format_layers(results, shape, threads))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "threads": threads, "shape": shape,
                       "layers": [dataclasses.asdict(r) for r in results]}, f, indent=2)
    return 0


def _run_tune(args, threads: int) -> int:
    from . import tune

    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            with_torch = False
            print("PyTorch is not installed: comparing convx's implementations only.", file=sys.stderr)
    cases = [CASES[name] for name in args.case] if args.case else list(CASES.values())
    cases = [quick(c) if args.quick else c for c in cases if c.kind == "conv"]
    ops = tuple(args.op) if args.op else ALL_OPS
    repeat = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    info = machine_info()
    print(f"convx {info['convx']}, {threads} threads; {info['cpu']}, {info['cores']} cores; torch {info['torch']}",
          file=sys.stderr)
    results = []
    run_load = _load.OtherLoad()
    for index, case in enumerate(cases, 1):
        print(f"[{index}/{len(cases)}] {case.name}: {case.describe()}", file=sys.stderr, flush=True)
        results += tune.tune_case(case, ops, repeat, with_torch)
    print(tune.format_tune(results))
    load = run_load.fraction()
    if load is not None and load > _load.BUSY_MACHINE:
        print(f"warning: other processes used {100 * load:.0f}% of the CPUs during the run; the times are not "
              "to be trusted", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "threads": threads, "repeat": repeat, "quick": args.quick,
                       "tune": [dataclasses.asdict(r) for r in results]}, f, indent=2)
    if args.save_tuning:
        print(f"saved the fastest choices to {tune.save_fastest(results)}",
              file=sys.stderr)
    return 0


def main(argv=None, reuse_memory: bool = False) -> int:
    """The benchmark; ``reuse_memory`` (what ``python -m convx.bench`` passes) keeps freed memory
    in the process unless ``--fresh-pages`` is given: a process-wide allocator setting, which a
    caller that goes on running other code may not want."""
    args = parse_args(argv)
    if args.threads is not None:
        _threads.set_num_threads(args.threads)
    threads = _threads.get_num_threads()
    if reuse_memory and not args.nets and not args.fresh_pages:
        reuse_freed_memory()
    if args.layers:
        return _run_layers(args, threads)
    if args.tune:
        return _run_tune(args, threads)
    if args.nets:
        return net_report.run(args.net, args.batch, args.repeat, args.quick, not args.no_torch, not args.no_onnx,
                              args.profile, args.json, args.plot, ["python", "-m", "convx.bench", *(
                                  sys.argv[1:] if argv is None else argv)], args.retry_busy)
    implementations = (["convx"] + ([] if args.no_winograd else ["winograd"]) + ([] if args.no_numpy else ["numpy"])
                       + ([] if args.no_torch else ["torch"]) + (["copy"] if args.ceiling else []))
    if "torch" in implementations:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            implementations.remove("torch")
            print("PyTorch is not installed: comparing with NumPy only.", file=sys.stderr)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    suite = CASES_3D if args.suite == "3d" else CASES
    cases = [suite[name] for name in args.case] if args.case else list(suite.values())
    if args.quick:
        cases = [quick(c) for c in cases]
    ops = tuple(args.op) if args.op else ALL_OPS

    info = machine_info()
    print(f"convx {info['convx']} (OpenMP {'on' if info['convx_openmp'] else 'OFF'}), {threads} threads; "
          f"{info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; torch {info['torch']}", file=sys.stderr)
    results: list[Result] = []
    run_load = _load.OtherLoad()
    start_calibration = calibration()
    load_by_case: dict[str, float | None] = {}
    passes = min(args.passes or (QUICK_PASSES if args.quick else 1), repeat)
    per_pass = -(-repeat // passes)
    repeat = per_pass * passes
    # The NumPy reference's budget per op over all passes (None: unbounded), each pass's share, and
    # its seconds so far per (case, op): an op that has spent the budget (one call of seconds) is not
    # timed again in later passes.
    reference_budget = QUICK_REFERENCE_SECONDS if args.quick else None
    reference_seconds = reference_budget / passes if reference_budget is not None else None
    reference_spent: dict[tuple[str, str], float] = {}
    timed: list[list[Result]] = []
    others = [name for name in implementations if name != "numpy"]

    def note_load(case_name: str, case_load: _load.OtherLoad) -> None:
        load = case_load.fraction()
        if load is not None:
            load_by_case[case_name] = max(load, load_by_case.get(case_name) or 0.0)
        else:
            load_by_case.setdefault(case_name, None)

    for turn in range(passes):
        label = f" pass {turn + 1}/{passes}" if passes > 1 else ""
        if "numpy" in implementations:
            # Every case's reference, then one pause for the BLAS threads its products leave spinning.
            print(f"NumPy reference{label}", file=sys.stderr, flush=True)
            for case in cases:
                left = [op for op in ops if reference_budget is None or turn == 0
                        or reference_spent.get((case.name, op), 0.0) < reference_budget]
                if not left:
                    continue
                case_load = _load.OtherLoad()
                reference = time_case(case, left, ["numpy"], per_pass, reference_seconds=reference_seconds,
                                      layout=args.layout, settle_after=False)
                for result in reference:
                    key = (result.case, result.op)
                    reference_spent[key] = reference_spent.get(key, 0.0) + sum(result.samples.get("numpy", []))
                timed.append(reference)
                note_load(case.name, case_load)
            settle()
        for index, case in enumerate(cases, 1):
            print(f"[{index}/{len(cases)}]{label} {case.name}: {case.describe()}", file=sys.stderr, flush=True)
            case_load = _load.OtherLoad()
            timed.append(time_case(case, ops, others, per_pass, layout=args.layout))
            note_load(case.name, case_load)
    results = merge_passes(timed)
    shown = ("convx", "numpy", "torch", "winograd") if args.wide else ("convx", "numpy", "torch")
    trust = Trust(run_load.fraction(), load_by_case, (start_calibration, calibration()),
                  shown + (("convx_nhwc",) if args.layout == "both" else ()))
    batches = sorted({c.batch for c in cases})
    print(textwrap.fill(f"convx {info['convx']}, {threads} threads, {info['cpu']} ({info['cores']} cores); "
                        f"{'--quick: ' if args.quick else ''}batch "
                        f"{'-'.join(str(b) for b in batches[::len(batches) - 1 or 1])}, {repeat} runs per op"
                        + (f" in {passes} passes" if passes > 1 else "")
                        + {"NCHW": "", "NHWC": "; convx channels last (NHWC)",
                           "both": "; convx channels first and last (NCHW and NHWC)"}[args.layout], WIDTH))
    print(format_table(results, repeat, wide=args.wide))
    # --ceiling and --memory measure convx in its layout (channels first with 'both').
    own_layout = "NHWC" if args.layout == "NHWC" else "NCHW"

    ceilings = []
    if args.ceiling and any(case.kind == "conv" for case in cases):
        by_key = {(r.case, r.op): r for r in results}
        print(f"\nforward vs numpy's GEMM on the same product ({threads} threads), and 1 -> {threads} threads:")
        for case in cases:
            forward = by_key.get((case.name, "forward"))
            if case.kind != "conv" or forward is None or "convx" not in forward.times:
                continue
            rate = gemm_ceiling(case, threads, repeat)
            convx_rate = forward.flops / forward.times["convx"]
            one, many = thread_scaling(case, "forward", threads, repeat, layout=own_layout)
            ceilings.append({"case": case.name, "gemm_flops_per_s": rate, "convx_forward_flops_per_s": convx_rate,
                             "forward_1_thread_s": one, f"forward_{threads}_threads_s": many})
            print(f"  {case.name:15s} GEMM {rate / 1e9:7.1f} GFLOP/s   convx forward {convx_rate / 1e9:7.1f} "
                  f"({100 * convx_rate / rate:5.1f}% of it)   {threads} threads {one / many:4.2f}x faster than 1")

    fused = []
    if args.ceiling and "backward" in ops and any(case.kind == "conv" for case in cases):
        print("\nfused backward vs the three separate calls (input, weight and bias gradients), interleaved:")
        for case in cases:
            if case.kind != "conv":
                continue
            together, apart = fused_backward(case, repeat, layout=own_layout)
            fused.append({"case": case.name, "fused_s": together, "separate_s": apart})
            print(f"  {case.name:15s} fused {together * 1e3:8.2f} ms   separate {apart * 1e3:8.2f} ms   "
                  f"{100 * (1 - together / apart):5.1f}% cheaper")

    copies = []
    if args.ceiling and any(case.kind == "pool" for case in cases):
        print("\npooling vs a one-thread copy of the bytes it must read and write (timed with the others):")
        by_name = {case.name: case for case in cases}
        for r in results:
            case = by_name[r.case]
            if "copy" not in r.times or "convx" not in r.times:
                continue
            read, written = case.bytes_moved(r.op)
            copies.append({"case": r.case, "op": r.op, "bytes_read": read, "bytes_written": written,
                           "copy_s": r.times["copy"], "convx_s": r.times["convx"]})
            print(f"  {r.case:15s} {r.op:9s} {(read + written) / 2**20:6.1f} MiB   copy {r.times['copy'] * 1e3:6.2f} ms   "
                  f"convx {r.times['convx'] * 1e3:6.2f} ms = {r.ratio('convx', 'copy'):4.2f}x the copy")

    memory = []
    if args.memory:
        print("\nextra memory beyond the outputs (MiB), batch N and 4N:")
        for case in cases:
            for op in case.ops:
                if op not in ops and not (case.kind == "pool" and op in ("forward", "backward")):
                    continue
                with_winograd = "winograd" in implementations and winograd_applies(case)
                for name in ["convx", "winograd"] if with_winograd else ["convx"]:
                    small, large = (extra_memory(case, op, b, name, own_layout) for b in (case.batch, 4 * case.batch))
                    memory.append({"case": case.name, "op": op, "implementation": name, "batch": case.batch,
                                   "extra_bytes": small, "batch_x4": 4 * case.batch, "extra_bytes_x4": large})
                    label = op if name == "convx" else f"{op} (wino)"
                    print(f"  {case.name:18s} {label:23s} N={case.batch:<3d} {small / 2**20:8.2f}   "
                          f"N={4 * case.batch:<3d} {large / 2**20:8.2f}")

    if args.json:
        payload = {"machine": info, "threads": threads, "repeat": repeat, "quick": args.quick,
                   "layout": args.layout, "results": [dataclasses.asdict(r) for r in results], "memory": memory,
                   "ceilings": ceilings, "fused": fused, "copies": copies, "summary": summary(results),
                   "trust": trust.as_json(results)}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print()
    print(summary(results))
    print(trust.verdict(results, repeat))
    return 0

