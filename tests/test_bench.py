"""Smoke runs of the benchmark CLI and the pytest-benchmark suites (no timing assertions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--threads", "0"])
    with pytest.raises(SystemExit):
        main(["--case", "no_such_case"])


def test_pytest_benchmark_suite_runs():
    pytest.importorskip("pytest_benchmark")
    env = dict(os.environ, CONVX_BENCH_QUICK="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "--benchmark-disable",
         "-k", "lenet_c1 and convx", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


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
