"""Kernel choice: what each convolution runs (conv_implementation against what ran), the
per-thread settings (ConvConfig), the autotuner (convx.set_autotune) and convx.explain.

Every implementation a setting reaches is checked against the NumPy reference here too, so that
a choice the autotuner makes can only be a correct one.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
from convx import _autotune, _core
from convx.functional.conv import _conv_call, _kernel_plan, _plan_conv, _winograd
from convx.reference import conv as reference

GEOMETRIES = {
    "3x3-64": dict(x=(4, 64, 16, 16), w=(64, 64, 3, 3), padding=1),
    "3x3-few-inputs": dict(x=(3, 3, 20, 20), w=(32, 3, 3, 3), padding=1),
    "5x5-one-input": dict(x=(8, 1, 28, 28), w=(20, 1, 5, 5)),
    "1x1-planes": dict(x=(2, 32, 24, 24), w=(48, 32, 1, 1)),
    "1x1-large-planes": dict(x=(2, 16, 48, 48), w=(32, 16, 1, 1)),
    "strided": dict(x=(4, 16, 15, 17), w=(32, 16, 3, 3), stride=2, padding=1),
    "grouped-dilated": dict(x=(2, 32, 13, 11), w=(32, 16, 3, 2), dilation=2, padding=(2, 1), groups=2),
    "padding-cut": dict(x=(2, 8, 5, 6), w=(16, 8, 2, 3), padding=(3, 4)),
    "one-image-wide": dict(x=(1, 48, 9, 40), w=(96, 48, 3, 3), padding=1),
    "depthwise-3x3": dict(x=(2, 16, 20, 40), w=(16, 1, 3, 3), padding=1, groups=16),
    "depthwise-5x5-stride-2-multiplier": dict(x=(2, 8, 19, 21), w=(16, 1, 5, 5), stride=2, padding=2, groups=8),
}

CHOICES = [_autotune.Choice()] + [
    _autotune.Choice(gemm, direct) for gemm in _core.supported_gemm_kernels() for direct in _core.DIRECT_MODES
] + [_autotune.Choice(depthwise=kernel) for kernel in _core.DEPTHWISE_KERNELS]


def _kwargs(geometry):
    return {k: v for k, v in geometry.items() if k not in ("x", "w")}


def _arrays(geometry, dtype, rng):
    x = rng.standard_normal(geometry["x"]).astype(dtype)
    w = rng.standard_normal(geometry["w"]).astype(dtype)
    b = rng.standard_normal(geometry["w"][0]).astype(dtype)
    y = reference.conv2d(x, w, b, **_kwargs(geometry))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, y, grad_out


def _call(op, geometry, dtype, algorithm="direct"):
    kwargs = _kwargs(geometry)
    plan = _plan_conv(geometry["x"], geometry["w"], kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), kwargs.get("groups", 1))
    winograd = _winograd(algorithm, geometry["w"], plan, np.dtype(dtype).itemsize)
    kept = _kernel_plan(geometry["x"][2:], geometry["w"][2:], plan).plan
    return _conv_call(op, geometry["x"], geometry["w"], kept, np.dtype(dtype), algorithm, winograd)


@pytest.fixture
def autotune_state(monkeypatch, tmp_path):
    """Autotuning as a test leaves it: off, the default budget, no choices, a private cache dir."""
    monkeypatch.setenv("CONVX_CACHE_DIR", str(tmp_path))
    yield _autotune._state
    convx.set_autotune(False, budget=_autotune._BUDGET_SECONDS)
    convx.clear_autotune()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_every_setting_runs_what_it_predicts_and_computes_the_reference(name, dtype, rng):
    geometry = GEOMETRIES[name]
    kwargs = _kwargs(geometry)
    x, w, b, y, grad_out = _arrays(geometry, dtype, rng)
    expected_x = reference.conv2d_backward_input(grad_out, w, x.shape, **kwargs)
    expected_w = reference.conv2d_backward_weight(grad_out, x, w.shape, **kwargs)
    seen = set()
    for choice in CHOICES:
        predicted = {op: _autotune._signature(_call(op, geometry, dtype), choice)
                     for op in ("forward", "input", "weight")}
        with _core.ConvConfig(choice.gemm, choice.direct, choice.depthwise):
            assert_close(convx.conv2d(x, w, b, **kwargs), y)
            assert _core.conv_ran()["forward"] == predicted["forward"], choice
            assert_close(convx.conv2d_backward_input(grad_out, w, x.shape, **kwargs), expected_x)
            assert _core.conv_ran()["input"] == predicted["input"], choice
            assert_close(convx.conv2d_backward_weight(grad_out, x, w.shape, **kwargs), expected_w)
            assert _core.conv_ran()["weight"] == predicted["weight"], choice
            grad_x, grad_w, _ = convx.conv2d_backward(grad_out, x, w, **kwargs)
            ran = _core.conv_ran()
            assert f"{ran['input']} + {ran['weight']}" == _autotune._signature(_call("backward", geometry, dtype),
                                                                               choice)
        assert_close(grad_x, expected_x)
        assert_close(grad_w, expected_w)
        seen.update(predicted.values())
    # the settings reach more than one implementation of every geometry here
    assert len(seen) > (1 if name.startswith("depthwise") else 3), seen


def test_the_default_choice_is_what_the_process_settings_run(rng):
    geometry = GEOMETRIES["3x3-64"]
    x, w, b, y, _ = _arrays(geometry, np.float32, rng)
    convx.conv2d(x, w, b, padding=1)
    assert _core.conv_ran()["forward"] == _autotune._signature(_call("forward", geometry, np.float32),
                                                                _autotune.Choice())
    assert _core.conv_ran()["forward"].startswith(_core.gemm_kernel() + "/")


def test_conv_config_is_per_thread_and_restored(rng):
    geometry = GEOMETRIES["3x3-64"]
    x, w, b, _, _ = _arrays(geometry, np.float32, rng)
    entered, done = threading.Event(), threading.Event()
    seen = {}

    def other():
        with _core.ConvConfig("blas", "off"):
            entered.set()
            done.wait(30)
            convx.conv2d(x, w, b, padding=1)
            seen["other"] = _core.conv_ran()["forward"]
        convx.conv2d(x, w, b, padding=1)
        seen["after"] = _core.conv_ran()["forward"]

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(30)
    convx.conv2d(x, w, b, padding=1)
    mine = _core.conv_ran()["forward"]
    done.set()
    thread.join(30)
    assert seen["other"] == "blas/im2col"
    assert mine == seen["after"] and mine.startswith(_core.gemm_kernel() + "/")
    assert _core.direct_conv() == "auto" and _core.gemm_kernel() == _core.supported_gemm_kernels()[-1]


def test_conv_config_nests_and_refuses_bad_settings():
    outer = _core.ConvConfig("blas", None)
    with outer:
        with _core.ConvConfig(None, "off"):
            assert _core.conv_implementation("forward", 2, 8, 9, 9, 8, 3, 3, 9, 9, 1, 1, 1, 1, 1, 1, 1, True, 1) \
                == "blas/im2col"
        assert _core.conv_implementation("forward", 2, 8, 9, 9, 8, 3, 3, 9, 9, 1, 1, 1, 1, 1, 1, 1, True, 1) \
            == "blas/im2col"
        with pytest.raises(RuntimeError, match="already entered"):
            outer.__enter__()
    with pytest.raises(ValueError, match="gemm kernel must be one of"):
        _core.ConvConfig("sse", None)
    with pytest.raises(ValueError, match="direct conv mode must be one of"):
        _core.ConvConfig(None, "sideways")
    with pytest.raises(ValueError, match="op must be one of"):
        _core.conv_implementation("sideways", 2, 8, 9, 9, 8, 3, 3, 9, 9, 1, 1, 1, 1, 1, 1, 1, True, 1)


class _FakeClock:
    """time.perf_counter for the autotuner: each run of the convolution advances it by the cost
    given for the implementation the calling thread's settings select."""

    def __init__(self, call, costs, default):
        self.now = 0.0
        self.call = call
        self.costs = costs
        self.default = default
        self.runs = []

    def perf_counter(self):
        return self.now

    def compute(self, winograd):
        signature = "winograd" if winograd else _autotune._signature(self.call, _autotune.Choice())
        self.runs.append(signature)
        self.now += self.costs.get(signature, self.default)
        return signature


def _fake(monkeypatch, op, costs, default=1e-3, geometry="3x3-64", algorithm="direct"):
    call = _call(op, GEOMETRIES[geometry], np.float32, algorithm)
    clock = _FakeClock(call, costs, default)
    monkeypatch.setattr(_autotune, "time", clock)
    return call, clock


def test_autotune_keeps_the_fastest_and_reuses_it(monkeypatch, autotune_state):
    convx.set_autotune(True)
    call, clock = _fake(monkeypatch, "forward", {})
    options = _autotune.candidates(call)
    names = list(options)
    fastest = names[-1]
    clock.costs = {name: 1e-3 for name in names} | {fastest: 0.5e-3}
    assert _autotune.run(call, clock.compute) == fastest
    assert set(names) <= set(clock.runs)
    assert _autotune.chosen(call) == options[fastest]
    entry = convx._autotune.autotune_entries()[call.key()]
    assert entry["times"][fastest] == pytest.approx(0.5e-3)
    clock.runs.clear()
    assert _autotune.run(call, clock.compute) == fastest
    assert clock.runs == [fastest]


def test_autotune_keeps_the_rules_choice_within_five_percent(monkeypatch, autotune_state):
    convx.set_autotune(True)
    call, clock = _fake(monkeypatch, "weight", {})
    names = list(_autotune.candidates(call))
    clock.costs = {names[0]: 1e-3} | {name: 0.97e-3 for name in names[1:]}
    assert _autotune.run(call, clock.compute) == names[0]
    assert _autotune.chosen(call) == _autotune.Choice()


def test_autotune_spends_at_most_its_budget(monkeypatch, autotune_state):
    convx.set_autotune(True)
    call, clock = _fake(monkeypatch, "backward", {}, default=0.2)
    assert len(_autotune.candidates(call)) > 3
    _autotune.run(call, clock.compute)
    # one call of 0.2 s: the 0.5 s budget has room for two more runs, then the winner's
    assert len(clock.runs) <= 4
    convx.clear_autotune()
    convx.set_autotune(True, budget=0)
    clock.runs.clear()
    _autotune.run(call, clock.compute)
    assert clock.runs == [clock.runs[0]] and _autotune.chosen(call) == _autotune.Choice()
    convx.clear_autotune()
    convx.set_autotune(True, budget=100)
    clock.runs.clear()
    clock.default = 1e-3
    _autotune.run(call, clock.compute)
    # at most 20 times the first call on the others, then the winner
    assert len(clock.runs) <= 1 + _autotune._CALLS_BUDGET + 1


def test_autotune_off_runs_the_rules_choice_only(monkeypatch, autotune_state):
    call, clock = _fake(monkeypatch, "forward", {})
    _autotune.run(call, clock.compute)
    assert len(clock.runs) == 1 and not convx._autotune.autotune_entries()


def test_winograd_is_a_candidate_only_where_algorithm_auto_allows_it(autotune_state):
    assert "winograd" not in _autotune.candidates(_call("forward", GEOMETRIES["3x3-64"], np.float32))
    assert "winograd" in _autotune.candidates(_call("forward", GEOMETRIES["3x3-64"], np.float32, "auto"))
    assert "winograd" not in _autotune.candidates(_call("forward", GEOMETRIES["strided"], np.float32, "auto"))


def test_depthwise_candidates_are_the_depthwise_kernels_and_a_whole_window_has_one(autotune_state):
    depthwise = dict(x=(2, 8, 9, 40), w=(8, 1, 3, 3), padding=1, groups=8)
    whole = dict(x=(4, 3, 5, 5), w=(6, 3, 5, 5))
    assert sorted(_autotune.candidates(_call("forward", depthwise, np.float32))) == ["depthwise-direct",
                                                                                  "depthwise-split"]
    assert sorted(_autotune.candidates(_call("backward", depthwise, np.float32))) == [
        "depthwise-direct + depthwise-direct", "depthwise-split + depthwise-split"]
    assert list(_autotune.candidates(_call("weight", whole, np.float32))) == ["matmul (whole window)"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_autotuned_calls_compute_the_reference(dtype, rng, autotune_state):
    convx.set_autotune(True)
    for name, geometry in GEOMETRIES.items():
        kwargs = _kwargs(geometry)
        x, w, b, y, grad_out = _arrays(geometry, dtype, rng)
        expected_x = reference.conv2d_backward_input(grad_out, w, x.shape, **kwargs)
        expected_w = reference.conv2d_backward_weight(grad_out, x, w.shape, **kwargs)
        for _ in range(2):  # tuning, then the tuned choice
            assert_close(convx.conv2d(x, w, b, **kwargs), y)
            assert_close(convx.conv2d_backward_input(grad_out, w, x.shape, **kwargs), expected_x)
            assert_close(convx.conv2d_backward_weight(grad_out, x, w.shape, **kwargs), expected_w)
            grad_x, grad_w, grad_b = convx.conv2d_backward(grad_out, x, w, **kwargs)
            assert_close(grad_x, expected_x)
            assert_close(grad_w, expected_w)
            assert_close(grad_b, grad_out.sum(axis=(0, 2, 3)))
        call = _call("forward", geometry, dtype)
        convx.conv2d(x, w, b, **kwargs)
        assert _core.conv_ran()["forward"] == _autotune._signature(call, _autotune.chosen(call)), name
    assert len(convx._autotune.autotune_entries()) == 4 * len(GEOMETRIES)


def test_autotuned_layer_trains_as_untuned(rng, autotune_state):
    layer = convx.nn.Conv2d(16, 32, 3, padding=1)
    x = rng.standard_normal((4, 16, 12, 12)).astype(np.float32)
    grad = rng.standard_normal((4, 32, 12, 12)).astype(np.float32)
    y0 = layer.forward(x)
    g0 = layer.backward(grad)
    w0 = {name: grad.copy() for name, grad in layer.grads.items()}
    convx.set_autotune(True)
    for _ in range(2):
        assert_close(layer.forward(x), y0)
        assert_close(layer.backward(grad), g0)
        for name, expected in w0.items():
            assert_close(layer.grads[name], expected)


def test_save_and_load_round_trip(tmp_path, autotune_state, rng):
    convx.set_autotune(True)
    geometry = GEOMETRIES["strided"]
    x, w, b, _, _ = _arrays(geometry, np.float32, rng)
    convx.conv2d(x, w, b, **_kwargs(geometry))
    saved = convx._autotune.autotune_entries()
    path = convx.save_autotune()
    assert path == convx.autotune_path() and path.startswith(str(tmp_path))
    convx.clear_autotune()
    assert convx.load_autotune() == len(saved) == 1
    assert convx._autotune.autotune_entries() == saved
    other = tmp_path / "other.json"
    document = json.loads(Path(path).read_text())
    document["cpu"] = "another cpu"
    other.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="another CPU or convx version"):
        convx.load_autotune(other)
    document = json.loads(Path(path).read_text())
    key = next(iter(document["entries"]))
    document["entries"][key]["choice"] = ["sse9", None, False]
    other.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not a convx choice"):
        convx.load_autotune(other)


def test_set_autotune_refuses_bad_arguments(autotune_state):
    with pytest.raises(TypeError, match="True or False"):
        convx.set_autotune("yes")
    for budget in (-1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="budget must be"):
            convx.set_autotune(True, budget=budget)
    assert not convx.get_autotune()


@pytest.mark.parametrize("value, enabled", [("1", True), ("on", True), ("0", False), ("", False)])
def test_convx_autotune_environment_variable(value, enabled, tmp_path):
    env = dict(os.environ, CONVX_AUTOTUNE=value, CONVX_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", "import convx; print(convx.get_autotune())"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(enabled)


def test_convx_autotune_environment_variable_warns_on_nonsense(tmp_path):
    env = dict(os.environ, CONVX_AUTOTUNE="maybe", CONVX_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import convx; print(convx.get_autotune())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and "CONVX_AUTOTUNE='maybe'" in out.stderr


def test_explain_names_what_runs_and_what_else_applies(autotune_state, rng):
    text = str(convx.explain((8, 64, 32, 32), (64, 64, 3, 3), padding=1))
    assert text.startswith("conv2d of (8, 64, 32, 32) by (64, 64, 3, 3)")
    explanation = convx.explain((8, 64, 32, 32), (64, 64, 3, 3), padding=1)
    for op in ("forward", "input", "weight", "backward"):
        about = explanation.ops[op]
        assert about.implementation == _autotune._signature(_call(op, dict(x=(8, 64, 32, 32), w=(64, 64, 3, 3),
                                                                            padding=1), np.float32),
                                                            _autotune.Choice())
        assert "built-in rules" in about.reason and about.alternatives and not about.seconds
    geometry = GEOMETRIES["3x3-64"]
    x, w, b, _, _ = _arrays(geometry, np.float64, rng)
    convx.set_autotune(True)
    convx.conv2d(x, w, b, padding=1)
    about = convx.explain(x, w, padding=1).ops["forward"]
    assert "float64" in str(convx.explain(x, w, padding=1))
    assert "autotuner" in about.reason and about.seconds
    assert about.implementation == _core.conv_ran()["forward"]


def test_explain_depthwise_whole_window_and_bad_arguments():
    depthwise = convx.explain((2, 8, 9, 9), (8, 1, 3, 3), padding=1, groups=8)
    assert depthwise.ops["forward"].implementation in ("depthwise-split", "depthwise-direct")
    assert "depthwise kernels" in depthwise.ops["forward"].reason
    assert depthwise.ops["forward"].alternatives
    whole = convx.explain((4, 3, 5, 5), (6, 3, 5, 5))
    assert whole.ops["weight"].implementation == "matmul (whole window)"
    assert convx.explain((3, 9, 9), (4, 3, 3, 3), dtype=np.float64).ops["input"].implementation
    with pytest.raises(ValueError, match="float32 or float64"):
        convx.explain((1, 3, 9, 9), (4, 3, 3, 3), dtype=np.int32)
    with pytest.raises(ValueError):
        convx.explain((1, 3, 9, 9), (4, 5, 3, 3))
