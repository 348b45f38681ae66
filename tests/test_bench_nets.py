"""The whole-network benchmark (``python -m convx.bench --nets``): its convx and PyTorch models are
one net with one set of weights, its ONNX graphs are those models, its residual block is right,
and the command runs end to end (no timing assertions)."""

import io
import json
import sys

import numpy as np
import pytest

import convx
from convx import nn
from convx.bench.cli import main
from convx.bench.nets import measure, models, report
from convx.bench.nets.onnx_graph import ort_session, to_onnx

NETS = list(models.NETS)
BATCH = 4
# measure.relative_error (max |difference| / max |reference|), float32. Whole-net outputs and
# the loss meet the 1e-5; a gradient deep in the net, through BatchNorm's batch
# statistics, sums more rounding: the benchmark's own flag, 1e-4.
OUTPUT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = report.AGREEMENT_FLAG


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", NETS)
def test_convx_and_torch_models_have_the_same_layers_and_keys(name, torch):
    net = models.NETS[name]
    theirs = models.torch_model(net)
    ours = models.convx_copy_of(theirs, net)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [p.name for p in ours.parameters()] == [n for n, _ in theirs.named_parameters()]
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], value.numpy())
    assert models.count_parameters(ours) == sum(p.numel() for p in theirs.parameters())
    x, _ = models.batch(net, BATCH)
    assert ours.eval()(x).shape == (BATCH, net.classes)


@pytest.mark.parametrize("name", NETS)
def test_outputs_loss_and_every_gradient_agree_with_torch(name, torch):
    net = models.NETS[name]
    agreement = measure.compare(net, BATCH, convx.get_num_threads(), use_torch=True, use_ort=False)
    assert agreement.inference_vs_ort is None
    for value in (agreement.inference_vs_torch, agreement.train_logits, agreement.loss):
        assert value is not None and value <= OUTPUT_TOLERANCE, agreement
    assert set(agreement.gradients) == {p.name for p in models.convx_model(net).parameters()}
    assert max(agreement.gradients.values()) <= GRADIENT_TOLERANCE, agreement.gradients
    assert agreement.weights_after_step is not None and agreement.weights_after_step <= OUTPUT_TOLERANCE
    # float64: the 1e-12 for logits, loss and every gradient.
    assert agreement.float64 is not None and agreement.float64 <= 1e-12, agreement.float64_worst
    # (No bound on the float32 gradients against float64: a ReLU input near zero that rounding
    # sends to the other side moves them by up to 1e-2 in either library; resnet's does here.)
    assert agreement.convx_float32_vs_float64 is not None and agreement.torch_float32_vs_float64 is not None


@pytest.mark.parametrize("name", NETS)
def test_onnx_graph_agrees_with_convx(name, ort):
    agreement = measure.compare(models.NETS[name], BATCH, 2, use_torch=False, use_ort=True)
    assert agreement.inference_vs_ort is not None and agreement.inference_vs_ort <= OUTPUT_TOLERANCE


# The reference for the hand-written graphs is PyTorch's TorchScript exporter (dynamo=False),
# which needs nothing beyond torch; it is deprecated and says so on every call, with these two
# warnings and nothing else.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.parametrize("name", NETS)
def test_onnx_graph_matches_torch_export(name, torch, ort):
    net = models.NETS[name]
    theirs = models.torch_model(net).eval()
    ours = models.convx_copy_of(theirs, net).eval()
    x, _ = models.batch(net, BATCH, seed=1)
    exported = io.BytesIO()
    torch.onnx.export(theirs, (torch.from_numpy(x),), exported, dynamo=False, input_names=["x"],
                      output_names=["logits"])
    from_torch = ort_session(exported.getvalue(), 1).run(None, {"x": x})[0]
    from_convx = ort_session(to_onnx(ours, x.shape), 1).run(None, {"x": x})[0]
    assert measure.relative_error(from_convx, from_torch) <= 1e-6


def test_to_onnx_refuses_layers_it_cannot_translate(ort):
    with pytest.raises(NotImplementedError, match="Tanh"):
        to_onnx(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), (1, 1, 5, 5))
    with pytest.raises(NotImplementedError, match="padding_mode='reflect'"):
        to_onnx(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 1, 5, 5))


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_residual_block_gradients(projection, rng):
    # Both paths' input gradients add up, and every parameter of both gets its gradient.
    options = dict(dtype=np.float64, rng=rng)
    body = nn.Sequential(nn.Conv2d(2, 3 if projection else 2, 3, padding=1, **options), nn.Tanh())
    shortcut = nn.Conv2d(2, 3, 1, **options) if projection else None
    block = models.Residual(body, shortcut)
    # Shifted away from 0, so that no finite-difference step crosses ReLU's kink.
    x = rng.standard_normal((2, 2, 4, 4)) + 3.0
    assert convx.gradcheck(block, x)
    expected = ["body.0.weight", "body.0.bias"] + (["shortcut.weight", "shortcut.bias"] if projection else [])
    assert list(block.params) == list(block.grads) == [p.name for p in block.parameters()] == expected


def test_residual_block_modes_and_state(torch):
    ours = models.convx_model(models.NETS["resnet"])
    block = ours.layers[3]
    assert isinstance(block, models.Residual) and block.shortcut is None
    assert list(block.buffers) == [f"body.{i}.{key}" for i in (1, 4)
                                   for key in ("running_mean", "running_var", "num_batches_tracked")]
    ours.eval()
    assert not any(module.training for module in models.modules(ours))
    ours.train()
    assert all(module.training for module in models.modules(ours))
    # The generic module tree (an identity shortcut is no child at all).
    assert "(body): Sequential(" in repr(block) and "(shortcut)" not in repr(block)
    assert "(shortcut): Sequential(" in repr(ours.layers[4])


def _check_timings(entry, libraries):
    assert set(entry) == set(libraries)
    for timing in entry.values():
        assert timing["runs"] == 1 and 0 < timing["min_s"] <= timing["median_s"] <= timing["max_s"]


def test_cli_nets_runs_end_to_end(tmp_path, capsys, torch, ort):
    out, picture = tmp_path / "nets.json", tmp_path / "nets.png"
    assert main(["--nets", "--batch", str(BATCH), "--repeat", "1", "--profile", "--threads", "2",
                 "--json", str(out), "--plot", str(picture)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in NETS)
    assert "training step <= 0.80x PyTorch eager" in printed and "convx training step of resnet" in printed
    assert "flagged, float32 above 1e-04: none" in printed
    assert picture.stat().st_size > 0
    payload = json.loads(out.read_text())
    assert payload["mode"] == "nets" and payload["batch"] == BATCH and payload["threads"] == 2
    assert payload["command"][:4] == ["python", "-m", "convx.bench", "--nets"]
    assert payload["machine"]["convx"] and payload["machine"]["onnxruntime"] and payload["machine"]["torch"]
    assert payload["targets"] == {"train_convx_torch": 0.8, "inference_convx_ort": 1.0, "agreement": 1e-5,
                                  "agreement_float64": 1e-12}
    assert [result["net"] for result in payload["nets"]] == NETS
    for result in payload["nets"]:
        _check_timings(result["train"], {"convx", "torch"})
        _check_timings(result["inference"], {"convx", "torch", "ort"})
        assert all(value > 0 for value in result["ratios"].values())
        assert set(result["targets_met"]) == {"train", "inference"}
        agreement = result["agreement"]
        assert agreement["inference_vs_ort"] <= OUTPUT_TOLERANCE and agreement["loss"] <= OUTPUT_TOLERANCE
        assert agreement["worst_gradient"] == max(agreement["gradients"].values()) <= GRADIENT_TOLERANCE
        assert agreement["float64"] <= 1e-12 and agreement["float64_worst"]
        layers = {row["layer"] for row in result["profile"]["convx"]}
        assert {"Linear", "CrossEntropyLoss", "SGD"} <= layers
        assert result["profile"]["torch"]
    by_name = {result["net"]: result for result in payload["nets"]}
    # nn.Sequential fuses: the BatchNorm2d + ReLU pairs run as one (their backward under BatchNorm2d).
    vgg_layers = {row["layer"] for row in by_name["vgg_bn"]["profile"]["convx"]}
    assert {"BatchNorm2d", "BatchNorm2d + relu (fused)", "Conv2d 3x3"} <= vgg_layers
    assert "Conv2d 3x3 depthwise" in {row["layer"] for row in by_name["mobilenet"]["profile"]["convx"]}
    assert "Residual (add)" in {row["layer"] for row in by_name["resnet"]["profile"]["convx"]}


def test_cli_nets_times_convx_alone_without_the_others(tmp_path, capsys, monkeypatch):
    # As where neither PyTorch nor ONNX Runtime is installed: importing them fails.
    for module in ("torch", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "alone.json"
    assert main(["--nets", "--net", "lenet5", "--batch", "2", "--repeat", "1", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "PyTorch is not installed" in captured.err and "onnxruntime are not both installed" in captured.err
    (result,) = json.loads(out.read_text())["nets"]
    _check_timings(result["train"], {"convx"})
    _check_timings(result["inference"], {"convx"})
    assert set(result["ratios"].values()) == {None} and set(result["targets_met"].values()) == {None}


def test_cli_nets_rejects_mixed_options():
    for argv in (["--nets", "--case", "lenet_c1"], ["--nets", "--memory"], ["--net", "lenet5"], ["--profile"],
                 ["--retry-busy", "1"], ["--nets", "--retry-busy", "-1"], ["--nets", "--batch", "1"],
                 ["--nets", "--net", "alexnet"]):
        with pytest.raises(SystemExit):
            main(argv)


def test_cli_nets_times_a_net_again_when_the_machine_was_busy(tmp_path, capsys, monkeypatch):
    loads = iter([0.5, 0.01])  # other processes' share during the first attempt, then the second
    monkeypatch.setattr(measure.OtherLoad, "fraction", lambda self: next(loads))
    waits = []
    monkeypatch.setattr(measure, "wait_for_quiet", lambda threshold, timeout: waits.append(threshold) or True)
    out = tmp_path / "retried.json"
    assert main(["--nets", "--net", "lenet5", "--no-torch", "--no-onnx", "--batch", "2", "--repeat", "1",
                 "--retry-busy", "2", "--json", str(out)]) == 0
    assert waits == [report.BUSY_MACHINE]
    (result,) = json.loads(out.read_text())["nets"]
    assert result["attempts"] == 2 and result["other_load"] == 0.01
    assert "lenet5 1% (2 attempts)" in capsys.readouterr().out
