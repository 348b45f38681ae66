"""Smoke runs of the benchmark CLI and the pytest-benchmark suites (no timing assertions)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convx
from convx.bench.cli import main
from convx.bench.layers import LAYERS

ROOT = Path(__file__).resolve().parent.parent


def test_cli_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    status = main(["--quick", "--case", "lenet_c1", "--case", "maxpool_2x2", "--repeat", "1",
                   "--memory", "--ceiling", "--json", str(out)])
    assert status == 0
    table = capsys.readouterr().out
    assert "lenet_c1" in table and "maxpool_2x2" in table
    payload = json.loads(out.read_text())
    assert payload["machine"]["convx"]
    ops = {(r["case"], r["op"]) for r in payload["results"]}
    assert ("lenet_c1", "backward") in ops and ("maxpool_2x2", "backward") in ops
    for result in payload["results"]:
        assert result["times"]["convx"] > 0
        assert "numpy" in result["times"]
    assert payload["memory"]
    (ceiling,) = payload["ceilings"]  # the convolution case only
    assert ceiling["case"] == "lenet_c1" and ceiling["gemm_flops_per_s"] > 0 and ceiling["forward_1_thread_s"] > 0
    assert "of it" in table and "faster than 1" in table
    (fused,) = payload["fused"]  # the convolution case only
    assert fused["case"] == "lenet_c1" and fused["fused_s"] > 0 and fused["separate_s"] > 0
    assert "% cheaper" in table
    copies = {(c["case"], c["op"]): c for c in payload["copies"]}  # the pooling case only
    assert set(copies) == {("maxpool_2x2", "forward"), ("maxpool_2x2", "backward")}
    # 2x64x56x56 float32 in; 2x64x28x28 float32 values and int64 indices out.
    assert copies["maxpool_2x2", "forward"]["bytes_read"] == 2 * 64 * 56 * 56 * 4
    assert copies["maxpool_2x2", "forward"]["bytes_written"] == 2 * 64 * 28 * 28 * 12
    assert copies["maxpool_2x2", "backward"]["bytes_written"] == 2 * 64 * 56 * 56 * 4
    assert all(c["copy_s"] > 0 for c in copies.values()) and "the copy" in table


def test_quick_spreads_each_ops_runs_over_passes(tmp_path, capsys):
    """--quick times every case in passes (the NumPy reference too, at least once a pass within its
    budget): each op has its runs from every pass, in the order taken, their median and spread."""
    out = tmp_path / "results.json"
    assert main(["--quick", "--case", "lenet_c1", "--case", "maxpool_2x2", "--op", "forward", "--repeat", "4",
                 "--passes", "2", "--no-torch", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 runs per op in 2 passes" in " ".join(captured.out.split())
    assert "pass 2/2" in captured.err
    payload = json.loads(out.read_text())
    assert {(r["case"], r["op"]) for r in payload["results"]} == {("lenet_c1", "forward"), ("maxpool_2x2", "forward")}
    for result in payload["results"]:
        assert result["runs"]["convx"] == len(result["samples"]["convx"]) == 4
        assert result["times"]["convx"] == pytest.approx(float(np.median(result["samples"]["convx"])))
        assert 2 <= result["runs"]["numpy"] <= 4


def test_quick_times_the_reference_again_only_within_its_budget(tmp_path, monkeypatch):
    """An op whose NumPy reference has spent --quick's budget (one call of seconds) is not timed again
    in later passes: with no budget, one run each, from the first pass."""
    from convx.bench import cli

    monkeypatch.setattr(cli, "QUICK_REFERENCE_SECONDS", 0.0)
    out = tmp_path / "results.json"
    assert main(["--quick", "--case", "lenet_c1", "--case", "maxpool_2x2", "--op", "forward", "--repeat", "4",
                 "--passes", "2", "--no-torch", "--json", str(out)]) == 0
    for result in json.loads(out.read_text())["results"]:
        assert result["runs"]["numpy"] == 1 and result["runs"]["convx"] == 4


def test_merge_passes_keeps_every_run_in_order():
    from convx.bench.runner import Result, merge_passes

    first = [Result("a", "forward", 1.0, {"convx": 2.0}, {"convx": 2}, samples={"convx": [1.0, 3.0]},
                    spread={"convx": 1.0}, layout_error=None),
             Result("a", "backward", 1.0, {"convx": 5.0}, {"convx": 1}, samples={"convx": [5.0]})]
    reference = [Result("a", "forward", 1.0, {"numpy": 9.0}, {"numpy": 1}, samples={"numpy": [9.0]})]
    second = [Result("a", "forward", 1.0, {"convx": 4.0}, {"convx": 2}, samples={"convx": [4.0, 4.0]},
                     layout_error=0.5)]
    merged = merge_passes([reference, first, second])
    assert [(r.case, r.op) for r in merged] == [("a", "forward"), ("a", "backward")]
    forward = merged[0]
    assert forward.samples == {"numpy": [9.0], "convx": [1.0, 3.0, 4.0, 4.0]}
    assert forward.times == {"numpy": 9.0, "convx": 3.5} and forward.runs == {"numpy": 1, "convx": 4}
    assert forward.spread["numpy"] == 0.0 and forward.spread["convx"] > 0
    assert forward.layout_error == 0.5
    assert first[0].samples == {"convx": [1.0, 3.0]}  # the passes' results are left as they were


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--threads", "0"])
    with pytest.raises(SystemExit):
        main(["--case", "no_such_case"])
    with pytest.raises(SystemExit):
        main(["--passes", "0"])


def test_pytest_benchmark_suite_runs():
    pytest.importorskip("pytest_benchmark")
    env = dict(os.environ, CONVX_BENCH_QUICK="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "--benchmark-disable",
         "-k", "lenet_c1 and convx", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 passed" in done.stdout  # 4 ops, convx channels first ("convx") and last ("convx_nhwc")


def test_large_window_cases_run(capsys):
    # The large-window max-pool cases (issue 25): present, and quick on convx (the two cheapest).
    from convx.bench.cases import CASES

    large = [name for name in CASES if name.startswith("maxpool_large_")]
    assert len(large) >= 3 and "maxpool_large_k127" in large
    assert main(["--quick", "--case", "maxpool_large_1x1_k2049", "--case", "maxpool_large_k31_s2",
                 "--repeat", "1", "--no-torch"]) == 0
    table = capsys.readouterr().out
    assert "maxpool_large_1x1_k2049" in table and "maxpool_large_k31_s2" in table


def test_layers_mode_times_every_element_wise_layer(tmp_path, capsys, torch):
    out = tmp_path / "layers.json"
    assert main(["--layers", "--quick", "--repeat", "1", "--threads", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    names = [row["name"] for row in data["layers"]]
    assert names == [name for name, *_ in LAYERS]
    for row in data["layers"]:
        assert row["forward"] > 0 and row["backward"] > 0 and row["copy_forward"] > 0
        assert row["torch_forward"] > 0 and row["torch_backward"] > 0
        assert row["name"] in table
    with pytest.raises(SystemExit):
        main(["--layers", "--nets"])


# -- the report: readable in 100 columns, directions said, spread shown, warnings when disturbed --


def _result(case, op, samples, kind="conv", flops=1e9, bytes_moved=None):
    """A Result from made-up runs (seconds per implementation), as runner.time_case makes them."""
    import statistics

    from convx.bench._load import relative_iqr
    from convx.bench.runner import Result

    return Result(case, op, flops, {name: statistics.median(s) for name, s in samples.items()},
                  {name: len(s) for name, s in samples.items()}, samples=samples,
                  spread={name: relative_iqr(s) for name, s in samples.items()}, kind=kind, bytes_moved=bytes_moved)


STEADY = [
    _result("lenet_c1", "forward", {"convx": [1e-3] * 5, "numpy": [4e-3] * 5, "torch": [2e-3] * 5}),
    _result("lenet_c1", "backward_weight", {"convx": [2e-3] * 5, "numpy": [8e-3] * 5, "torch": [2e-3] * 5}),
    _result("maxpool_large_1x1_k2049", "backward", {"convx": [1e-3] * 5, "numpy": [1e-3] * 5, "torch": [4e-3] * 5},
            kind="pool", flops=123.0, bytes_moved=3_000_000),
]


def test_table_fits_100_columns_and_says_which_way_is_better():
    from convx.bench.table import format_table

    text = format_table(STEADY, 5)
    assert max(len(line) for line in text.splitlines()) <= 100
    header = "\n".join(text.splitlines()[1:3])
    assert "x faster" in header and "than NumPy" in header and "time /" in header and "PyTorch" in header
    assert "higher is better" in text and "lower is better" in text
    assert "median of 5 runs ± half the" in text and "fewer" not in text
    assert "median of 7 runs (fewer where calls are slow)" in format_table(STEADY, 7)
    # Every cell is the median and its spread.
    row = next(line for line in text.splitlines() if line.startswith("lenet_c1 forward"))
    assert "1.00 ± 0%" in row and "4.00 ± 0%" in row and "2.00 ± 0%" in row
    assert row.split()[-2:] == ["4.0", "0.50"]  # x faster than NumPy, time / PyTorch


def test_pooling_rows_show_bytes_per_second_and_convolutions_flops():
    from convx.bench.table import format_table

    text = format_table(STEADY, 5)
    conv, pool = text.split("\nPooling\n")
    assert "GFLOP/s" in conv and "GB/s" not in conv
    assert "GB/s" in pool and "GFLOP/s" not in pool.split("\n\n")[0]
    row = next(line for line in pool.splitlines() if line.startswith("maxpool_large_1x1_k2049"))
    assert row.split()[-3] == "3.0"  # 3 MB read and written in 1 ms
    conv_row = next(line for line in conv.splitlines() if line.startswith("lenet_c1 forward"))
    assert conv_row.split()[-3] == "1000.0"  # 1 GFLOP in 1 ms


def test_wide_table_keeps_the_detail():
    from convx.bench.table import format_table

    rows = STEADY + [_result("vgg_3x3", "forward", {"convx": [2e-3] * 3, "winograd": [1e-3] * 3, "torch": [4e-3] * 3})]
    text = format_table(rows, 3, wide=True)
    assert "backward_weight" in text and "wino" in text and "algorithm='auto'" in text
    assert "wino" not in format_table(rows, 3).split("\n\n")[0]


def test_summary_names_only_the_peers_that_ran():
    from convx.bench.table import format_table, summary

    text = " ".join(summary(STEADY).splitlines())
    assert text.startswith("convx took 0.71x PyTorch's time on convolutions (geomean of 2 ops) and 0.25x on pooling "
                           "(1 op);")
    assert "it was 2.5x faster than pure NumPy (geomean of 3 ops)." in text
    without_torch = [_result(r.case, r.op, {k: v for k, v in r.samples.items() if k != "torch"}) for r in STEADY]
    assert summary(without_torch).startswith("convx was 2.5x faster than pure NumPy") and "PyTorch" not in summary(
        without_torch)
    slower = [_result("a", "forward", {"convx": [2e-3], "numpy": [1e-3]})]
    assert "2.0x slower than pure NumPy" in summary(slower)
    alone = [_result(r.case, r.op, {"convx": r.samples["convx"]}) for r in STEADY]
    assert "NumPy" not in format_table(alone, 5).split("ms: median")[0] and "alone" in summary(alone)


def test_trust_says_steady_or_warns_and_names_the_unsteady_ops():
    from convx.bench.table import Trust

    quiet = Trust(0.01, {"lenet_c1": 0.01}, (1e-3, 1.05e-3))
    assert quiet.warnings(STEADY, 5) == []
    assert quiet.verdict(STEADY, 5).startswith("Steady: every op within ±7.5% over its 5 runs")
    wobbly = STEADY + [_result("vgg_3x3", "backward", {"convx": [1e-3, 1e-3, 2e-3, 3e-3, 3e-3], "torch": [1e-3] * 5})]
    text = " ".join(quiet.verdict(wobbly, 5).splitlines())
    assert text.startswith("WARNING: 1 of 4 ops varied by more than ±7.5%") and "vgg_3x3 backward (convx ±" in text
    assert Trust(0.01, {}, (1e-3, 2e-3)).verdict(STEADY, 5).startswith("WARNING: a reference convolution took 1.00 ms")
    # Only the implementations the table shows count (the default table has no Winograd column).
    winograd = [_result("vgg_3x3", "forward", {"convx": [1e-3] * 5, "winograd": [1e-3, 1e-3, 2e-3, 3e-3, 3e-3]})]
    assert Trust(0.01, {}, None, ("convx", "numpy", "torch")).warnings(winograd, 5) == []
    assert "convx's Winograd ±50%" in " ".join(Trust(0.01, {}, None).warnings(winograd, 5))
    busy = " ".join(Trust(0.4, {"lenet_c1": 0.5, "vgg_3x3": 0.2}, None).verdict(STEADY, 5).splitlines())
    assert busy.startswith("WARNING: other processes used 40% of the CPUs during this run")
    assert "lenet_c1 50%" in busy and "rerun on an idle machine" in busy.lower()
    assert Trust(None, {}, None).verdict(STEADY, 5).startswith("Steady")  # no /proc/stat: nothing to say about load


def test_cli_warns_when_the_load_monitor_saw_other_processes(tmp_path, capsys, monkeypatch, torch):
    from convx.bench import _load

    monkeypatch.setattr(_load.OtherLoad, "fraction", lambda self: 0.37)
    out = tmp_path / "results.json"
    assert main(["--quick", "--case", "lenet_c1", "--case", "maxpool_large_1x1_k2049", "--repeat", "3",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "WARNING: other processes used 37% of the CPUs during this run" in text
    assert "x faster" in text and "GB/s" in text and "GFLOP/s" in text
    said = " ".join(text.split("\nconvx took", 1)[1].split("\nWARNING")[0].splitlines())
    assert "PyTorch's time on convolutions (geomean of 4 ops) and" in said and "on pooling (2 ops)" in said
    assert "than pure NumPy (geomean of 6 ops)" in said
    payload = json.loads(out.read_text())
    assert payload["trust"]["other_load"] == 0.37 and payload["trust"]["other_load_by_case"]["lenet_c1"] == 0.37
    start, end = payload["trust"]["calibration_s"]
    assert start > 0 and end > 0
    assert payload["summary"].startswith("convx took")
    for result in payload["results"]:
        for name in ("convx", "numpy", "torch"):
            runs = result["samples"][name]
            assert len(runs) == result["runs"][name] and all(t > 0 for t in runs)
            assert result["times"][name] == sorted(runs)[len(runs) // 2]
            assert result["spread"][name] >= 0
        assert result["kind"] == ("pool" if result["case"].startswith("maxpool") else "conv")
    pool = next(r for r in payload["results"] if r["kind"] == "pool")
    assert pool["bytes_moved"] == 2 * 64 * 1 * (4 + 4 + 8)  # 2x64 1x1 planes: float32 in, float32 and int64 out


def test_a_slow_reference_is_timed_once_within_its_budget(monkeypatch):
    # --quick gives the NumPy reference a budget: its slowest ops (seconds a call) run once.
    from convx.bench import runner
    from convx.bench.cases import CASES

    monkeypatch.setattr(runner, "_time_once", lambda call, number=1: 3.0)  # every call "takes" 3 s
    (result,) = runner.time_case(CASES["lenet_c1"], ["forward"], ["numpy", "convx"], 5, reference_seconds=1.0)
    assert result.runs == {"numpy": 1, "convx": 5}  # convx within the others' 20 s
    assert result.samples["numpy"] == [3.0] and result.spread == {"numpy": 0.0, "convx": 0.0}


def test_short_calls_are_timed_in_runs_of_several(monkeypatch):
    # A call of about 1 us is timed as runs of MIN_RUN_SECONDS worth of calls, each run's time
    # their mean; a call over MIN_RUN_SECONDS is timed alone.
    from convx.bench import runner

    counts = {"fast": 0, "slow": 0}

    def fast():
        counts["fast"] += 1

    def slow():
        counts["slow"] += 1
        time.sleep(runner.MIN_RUN_SECONDS * 1.2)

    _, _, number = runner._warm_up(fast, 10.0)
    assert 1 < number <= runner.MAX_CALLS_PER_RUN
    before = counts["fast"]
    assert runner._time_once(fast, number) < runner.MIN_RUN_SECONDS
    assert counts["fast"] - before == number
    assert runner._warm_up(slow, 10.0)[2] == 1


def test_tune_mode_compares_every_implementation_and_saves_the_fastest(tmp_path, capsys, monkeypatch, torch):
    from convx import _autotune

    monkeypatch.setenv("CONVX_CACHE_DIR", str(tmp_path))
    out = tmp_path / "tune.json"
    try:
        assert main(["--tune", "--quick", "--case", "lenet_c2", "--case", "resnet_1x1", "--op", "forward",
                     "--op", "backward", "--repeat", "1", "--json", str(out), "--save-tuning"]) == 0
        text = capsys.readouterr().out
        assert "lenet_c2 forward" in text and "resnet_1x1 backward" in text
        assert "autotuned choice within 5% of the fastest in" in text and "time / PyTorch's" in text
        results = json.loads(out.read_text())["tune"]
        assert {(r["case"], r["op"]) for r in results} == {(c, o) for c in ("lenet_c2", "resnet_1x1")
                                                           for o in ("forward", "backward")}
        for r in results:
            assert r["rules"] in r["times"] and r["tuned"] in r["times"] and "torch" in r["times"]
        assert not _autotune.get_autotune()
        _autotune.clear_autotune()
        assert convx.load_autotune() == 4
    finally:
        _autotune.clear_autotune()
    with pytest.raises(SystemExit):
        main(["--save-tuning"])
    with pytest.raises(SystemExit):
        main(["--tune", "--nets"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_command_keeps_freed_memory_unless_told_not_to(tmp_path):
    # In a child process: the allocator setting is process-wide.
    for extra, expected in (([], True), (["--fresh-pages"], False)):
        out = tmp_path / "run.json"
        subprocess.run([sys.executable, "-m", "convx.bench", "--quick", "--case", "lenet_c1", "--op", "forward",
                        "--repeat", "1", "--no-numpy", "--no-torch", "--no-winograd", "--json", str(out), *extra],
                       check=True, capture_output=True, cwd=ROOT)
        assert json.loads(out.read_text())["machine"]["freed_memory_reused"] is expected


# -- --layout: convx channels last, alone or beside channels first (issue 20's 1.05x target) --


def test_layout_both_times_each_op_in_both_layouts_and_compares_their_outputs(tmp_path, capsys):
    out = tmp_path / "layout.json"
    assert main(["--quick", "--case", "lenet_c2", "--case", "maxpool_3x3_s2", "--case", "avgpool_2x2",
                 "--repeat", "1", "--no-torch", "--no-winograd", "--layout", "both", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100
    header = "\n".join(line for line in text.splitlines() if "NHWC time" in line or "/ NCHW" in line)
    assert "NHWC time" in header and "/ NCHW" in header and "convx NCHW" in header
    assert "NHWC time / NCHW: convx's time channels last / its time channels first" in " ".join(text.split())
    said = " ".join(text.split("\nChannels last, convx took", 1)[1].split("\nWARNING")[0].split())
    assert "its channels-first time (geomean of 8 ops), at worst" in said and "of 8 ops took more than 1.05x" in said
    assert "The two layouts' outputs agreed to" in said
    payload = json.loads(out.read_text())
    assert payload["layout"] == "both"
    assert {(r["case"], r["op"]) for r in payload["results"]} == {
        *((("lenet_c2", op) for op in ("forward", "backward_input", "backward_weight", "backward"))),
        *(((case, op) for case in ("maxpool_3x3_s2", "avgpool_2x2") for op in ("forward", "backward")))}
    for result in payload["results"]:
        assert result["layout"] == "both"
        assert set(result["times"]) == {"convx", "convx_nhwc", "numpy"}
        assert result["runs"]["convx_nhwc"] == 1 and result["times"]["convx_nhwc"] > 0
        # Same products summed in other orders: float32 rounding apart, no more; pooling exactly.
        bound = 1e-5 if result["kind"] == "conv" else 0.0
        assert 0.0 <= result["layout_error"] <= bound, result
    ratio = payload["results"][0]["times"]["convx_nhwc"] / payload["results"][0]["times"]["convx"]
    assert f"{ratio:.2f}" in next(line for line in text.splitlines() if line.startswith("lenet_c2 forward"))


def test_layout_nhwc_runs_convx_and_torch_channels_last(tmp_path, capsys, torch):
    out = tmp_path / "nhwc.json"
    assert main(["--quick", "--case", "depthwise", "--case", "maxpool_2x2", "--op", "forward", "--op", "backward",
                 "--repeat", "1", "--no-numpy", "--layout", "NHWC", "--memory", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "convx NHWC" in text and "NHWC time" not in text and "convx channels last (NHWC)" in " ".join(text.split())
    assert "PyTorch's in torch.channels_last memory format" in " ".join(text.split())
    payload = json.loads(out.read_text())
    assert payload["layout"] == "NHWC" and payload["memory"]
    for result in payload["results"]:
        assert result["layout"] == "NHWC" and result["layout_error"] is None
        assert set(result["times"]) == {"convx", "torch"}


@pytest.mark.parametrize("case_name", ["resnet_3x3_s2", "vgg_3x3", "maxpool_3x3_s2", "avgpool_2x2"])
def test_layout_calls_take_channels_last_arrays_and_agree_with_channels_first(case_name, torch):
    from convx.bench.cases import CASES, quick
    from convx.bench.implementations import channels_first_outputs, convx_calls, torch_calls, winograd_calls

    case = quick(CASES[case_name])
    arrays = case.arrays(np.random.default_rng(1))
    first, last = convx_calls(case, arrays), convx_calls(case, arrays, "NHWC")
    torch_last = torch_calls(case, arrays, "NHWC")
    for op in case.ops:
        expected = first[op]()
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = last[op]()
        flat = got if isinstance(got, tuple) else (got,)
        if op == "forward":  # the data output is (N, H, W, C)
            assert flat[0].shape == np.moveaxis(expected[0], 1, -1).shape and flat[0].flags.c_contiguous
        for value, reference in zip(channels_first_outputs(case, op, got), expected):
            np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
        peer = torch_last[op]()
        peer = peer[0] if isinstance(peer, tuple) else peer
        if peer is not None and peer.dim() == 4 and peer.shape[1] > 1:
            assert peer.is_contiguous(memory_format=torch.channels_last)
    if case_name == "vgg_3x3":  # Winograd channels last too
        got = winograd_calls(case, arrays, "NHWC")["forward"]()
        np.testing.assert_allclose(np.moveaxis(got, -1, 1), first["forward"](), rtol=1e-3, atol=1e-3)


def test_layout_table_and_summary_from_made_up_runs():
    from convx.bench.table import Trust, format_table, layout_summary, summary

    rows = [_result("lenet_c1", "forward", {"convx": [1e-3] * 3, "convx_nhwc": [1.2e-3] * 3, "numpy": [7e-3] * 3,
                                             "torch": [2e-3] * 3}),
            _result("lenet_c1", "backward", {"convx": [2e-3] * 3, "convx_nhwc": [1e-3] * 3, "numpy": [4e-3] * 3,
                                              "torch": [2e-3] * 3}),
            _result("maxpool_large_1x1_k2049", "backward", {"convx": [1e-3] * 3, "convx_nhwc": [1.04e-3] * 3,
                                                             "numpy": [1e-3] * 3, "torch": [4e-3] * 3},
                    kind="pool", flops=1.0, bytes_moved=3_000_000)]
    for row, error in zip(rows, (2e-7, 0.0, 0.0)):
        row.layout, row.layout_error = "both", error
    for wide in (False, True):
        text = format_table(rows, 3, wide=wide)
        assert "NHWC time" in text and "/ NCHW" in text
        assert wide or max(len(line) for line in text.splitlines()) <= 100
    narrow = format_table(rows, 3)
    assert narrow.splitlines()[4].split()[-1] == "1.20" and "NHWC time / NCHW 0.77" in narrow
    assert "convx NHWC" in format_table(rows, 3, wide=True) and "7.00 ±" not in narrow  # NumPy ms: --wide
    said = " ".join(layout_summary(rows).split())
    geomean = (1.2 * 0.5 * 1.04) ** (1 / 3)
    assert said.startswith(f"Channels last, convx took {geomean:.2f}x its channels-first time (geomean of 3 ops), "
                           "at worst 1.20x (lenet_c1 forward); 1 of 3 ops took more than 1.05x")
    assert "agreed to 2.0e-07 relative error at worst (lenet_c1 forward" in said
    assert said in " ".join(summary(rows).split()) and layout_summary(STEADY) == ""
    assert Trust(0.01, {}, None).warnings(rows, 3) == []
    rows[1].layout_error = 0.5
    warned = " ".join(Trust(0.01, {}, None).warnings(rows, 3))
    assert "channels-last outputs differ from its channels-first ones" in warned
    assert "lenet_c1 backward (5.0e-01)" in warned


def test_layout_option_is_checked():
    for argv in (["--layout", "nhwc"], ["--layout", "NHWC", "--nets"], ["--layout", "both", "--tune"],
                 ["--layout", "NHWC", "--layers"]):
        with pytest.raises(SystemExit):
            main(argv)


@pytest.mark.parametrize("case_name", ["c3d_3x3x3", "unet3d_3x3x3", "stem3d_7x7x7_s2", "depthwise3d", "pointwise3d",
                                       "maxpool3d_2x2x2", "maxpool3d_3x3x3_s2"])
def test_3d_suite_calls_agree_across_libraries(case_name, torch):
    # Each library's calls of a 3-D case (shrunk to a small volume) give the same outputs: convx's
    # 3-D ops, the NumPy reference's and PyTorch's.
    from dataclasses import replace

    from convx.bench.cases import CASES_3D
    from convx.bench.implementations import convx_calls, numpy_calls, torch_calls

    case = CASES_3D[case_name]
    if case.kind == "conv":
        depthwise = case.groups > 1
        small = dict(c_in=8 if depthwise else min(case.c_in, 4), c_out=8, groups=8 if depthwise else 1)
    else:
        small = dict(channels=3)
    # (PyTorch 2.13's conv3d weight gradient crashes the process for the stem's 7x7x7 stride-2
    # kernel over a depth of 5; 9 is fine.)
    case = replace(case, batch=1, size=min(case.size, 11), depth=min(case.depth, 9), **small)
    arrays = case.arrays(np.random.default_rng(2))
    assert arrays["x"].ndim == 5
    calls = {"convx": convx_calls(case, arrays), "numpy": numpy_calls(case, arrays), "torch": torch_calls(case, arrays)}
    for op in case.ops:
        outputs = {}
        for name, made in calls.items():
            got = made[op]()
            got = got if isinstance(got, tuple) else (got,)
            outputs[name] = [g.numpy() if hasattr(g, "numpy") else g for g in got if g is not None]
        for name in ("numpy", "torch"):
            for value, expected in zip(outputs["convx"], outputs[name]):
                np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_3d_suite_runs_and_refuses_the_2d_only_options(tmp_path, capsys):
    out = tmp_path / "volumes.json"
    assert main(["--suite", "3d", "--quick", "--case", "maxpool3d_2x2x2", "--case", "pointwise3d", "--op", "forward",
                 "--repeat", "1", "--memory", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "maxpool3d_2x2x2" in captured.out and "pointwise3d" in captured.out
    assert "2x64->128 16x28x28 k1" in captured.err  # the progress lines describe the volumes
    payload = json.loads(out.read_text())
    assert {r["case"] for r in payload["results"]} == {"maxpool3d_2x2x2", "pointwise3d"}
    assert all(r["times"]["convx"] > 0 for r in payload["results"])
    for argv in (["--suite", "3d", "--layout", "NHWC"], ["--suite", "3d", "--ceiling"], ["--suite", "3d", "--nets"],
                 ["--suite", "3d", "--case", "vgg_3x3"], ["--case", "c3d_3x3x3"]):
        with pytest.raises(SystemExit):
            main(argv)
