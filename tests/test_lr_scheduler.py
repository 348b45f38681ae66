"""convx.optim.lr_scheduler against torch.optim.lr_scheduler: the same learning rates (and, for
OneCycleLR, momenta and betas) step for step, state_dict round trips, several parameter groups,
the optimizer's updates following the scheduled rate, and argument checking."""

import math

import numpy as np
import pytest
from conftest import DTYPES, assert_close

from convx import nn, optim
from convx.optim import lr_scheduler

STEPS = 60


def _groups(lrs, module):
    """convx parameter groups over the model's parameters, one per learning rate."""
    params = module.parameters()
    if len(lrs) == 1:
        return [{"params": params, "lr": lrs[0]}]
    return [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]


def _pair(torch, optimizer_name, lrs, options=None):
    """A convx optimizer on a tiny model and a torch optimizer on dummy tensors, same groups and options."""
    options = dict(options or {})
    model = nn.Linear(2, 1, rng=0)  # two parameters: weight and bias
    convx_optimizer = getattr(optim, optimizer_name)(_groups(lrs, model), **options)
    torch_groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    torch_optimizer = getattr(torch.optim, optimizer_name)(torch_groups, **options)
    return convx_optimizer, torch_optimizer


def _group_values(optimizer, key):
    return [group[key] for group in optimizer.param_groups]


def _run_together(convx_scheduler, torch_scheduler, convx_optimizer, torch_optimizer, steps, metrics=None,
                  keys=("lr",)):
    """Step both schedulers (after their optimizers' steps, the order PyTorch asks for) and
    compare what they set, exactly, at every step including the one the constructor performs."""
    def compare(step):
        assert convx_scheduler.get_last_lr() == torch_scheduler.get_last_lr(), f"step {step}"
        assert convx_scheduler.last_epoch == torch_scheduler.last_epoch, f"step {step}"
        for key in keys:
            assert _group_values(convx_optimizer, key) == _group_values(torch_optimizer, key), f"{key}, step {step}"

    compare(0)
    for step in range(1, steps + 1):
        convx_optimizer.step()
        torch_optimizer.step()
        if metrics is None:
            convx_scheduler.step()
            torch_scheduler.step()
        else:
            convx_scheduler.step(metrics[step - 1])
            torch_scheduler.step(metrics[step - 1])
        compare(step)


SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR", dict(step_size=1, gamma=0.9)),
    ("StepLR", dict(step_size=7)),
    ("MultiStepLR", dict(milestones=[2, 5, 11, 40], gamma=0.3)),
    ("MultiStepLR", dict(milestones=[0, 3])),
    ("MultiStepLR", dict(milestones=(1,), gamma=2.0)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("ExponentialLR", dict(gamma=0.5)),
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
    ("CosineAnnealingLR", dict(T_max=1, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=25, eta_min=0.0)),
]


def _schedule_id(case):
    return case[0] + "(" + ",".join(f"{k}={v}" for k, v in case[1].items()) + ")"


@pytest.mark.parametrize("lrs", [[0.1], [0.1, 0.023]], ids=["one_group", "two_groups"])
@pytest.mark.parametrize("case", SCHEDULES, ids=_schedule_id)
def test_epoch_schedules_match_torch(case, lrs, torch):
    name, options = case
    convx_optimizer, torch_optimizer = _pair(torch, "SGD", lrs)
    convx_scheduler = getattr(lr_scheduler, name)(convx_optimizer, **options)
    torch_scheduler = getattr(torch.optim.lr_scheduler, name)(torch_optimizer, **options)
    _run_together(convx_scheduler, torch_scheduler, convx_optimizer, torch_optimizer, STEPS)
    assert _group_values(convx_optimizer, "initial_lr") == lrs


@pytest.mark.parametrize("case", SCHEDULES[::3], ids=_schedule_id)
def test_resuming_with_last_epoch_matches_torch(case, torch):
    name, options = case
    convx_optimizer, torch_optimizer = _pair(torch, "SGD", [0.05, 0.2])
    for optimizer in (convx_optimizer, torch_optimizer):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"] * 2
    convx_scheduler = getattr(lr_scheduler, name)(convx_optimizer, last_epoch=4, **options)
    torch_scheduler = getattr(torch.optim.lr_scheduler, name)(torch_optimizer, last_epoch=4, **options)
    _run_together(convx_scheduler, torch_scheduler, convx_optimizer, torch_optimizer, 20)


def test_resuming_needs_initial_lr():
    optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(optimizer, step_size=2, last_epoch=3)


ONE_CYCLE = [
    ("SGD", dict(momentum=0.9), dict(max_lr=0.5, total_steps=40)),
    ("SGD", dict(momentum=0.9), dict(max_lr=0.5, total_steps=40, anneal_strategy="linear")),
    ("SGD", dict(momentum=0.9, nesterov=True), dict(max_lr=1.0, epochs=5, steps_per_epoch=7, three_phase=True)),
    ("SGD", dict(momentum=0.9), dict(max_lr=1.0, total_steps=33, three_phase=True, anneal_strategy="linear",
                                     pct_start=0.25, div_factor=10.0, final_div_factor=100.0)),
    ("SGD", dict(momentum=0.9), dict(max_lr=[0.5, 2.0], total_steps=20, base_momentum=[0.8, 0.7],
                                     max_momentum=[0.9, 0.99])),
    ("SGD", {}, dict(max_lr=0.3, total_steps=17, cycle_momentum=False, pct_start=0.5)),
    ("SGD", dict(momentum=0.9), dict(max_lr=0.3, total_steps=10, pct_start=0.0)),
    ("SGD", dict(momentum=0.9), dict(max_lr=0.3, total_steps=1)),
    ("Adam", {}, dict(max_lr=0.01, total_steps=30)),
    ("AdamW", dict(betas=(0.9, 0.98)), dict(max_lr=0.01, total_steps=30, three_phase=True, base_momentum=0.5,
                                             max_momentum=0.9)),
    ("RMSprop", dict(momentum=0.5), dict(max_lr=0.01, total_steps=12, anneal_strategy="linear")),
    ("Adagrad", {}, dict(max_lr=0.1, total_steps=12, cycle_momentum=False)),
]


@pytest.mark.parametrize("case", ONE_CYCLE, ids=lambda c: f"{c[0]}-" + _schedule_id(("OneCycleLR", c[2])))
def test_one_cycle_matches_torch(case, torch):
    optimizer_name, optimizer_options, options = case
    n_groups = 2 if isinstance(options["max_lr"], list) else 1
    convx_optimizer, torch_optimizer = _pair(torch, optimizer_name, [0.1] * n_groups, optimizer_options)
    convx_scheduler = lr_scheduler.OneCycleLR(convx_optimizer, **options)
    torch_scheduler = torch.optim.lr_scheduler.OneCycleLR(torch_optimizer, **options)
    keys = ["lr", "initial_lr", "max_lr", "min_lr"]
    if options.get("cycle_momentum", True):
        keys += ["max_momentum", "base_momentum", "betas" if "betas" in convx_optimizer.defaults else "momentum"]
    total = convx_scheduler.total_steps
    assert total == torch_scheduler.total_steps
    # Every step PyTorch allows: the cycle ends at last_epoch == total_steps.
    _run_together(convx_scheduler, torch_scheduler, convx_optimizer, torch_optimizer, total, keys=keys)
    before = convx_scheduler.state_dict()
    with pytest.raises(ValueError, match=f"past its total_steps={total}"):
        convx_scheduler.step()
    with pytest.raises(ValueError, match="Tried to step"):
        torch_scheduler.step()
    # Unlike PyTorch's, the failed step leaves the scheduler as it was.
    assert convx_scheduler.state_dict() == before


def test_one_cycle_empty_phase_is_a_clear_error(torch):
    # pct_start * total_steps == 1 leaves the first phase no steps; PyTorch divides by zero.
    optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=0.1, momentum=0.9)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    with pytest.raises(ValueError, match="phase 0 is empty"):
        lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10, pct_start=0.1)
    # A constructor that fails leaves the optimizer's groups as they were.
    assert [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups] == groups
    # pct_start=1 leaves the last phase empty: reached only at the final step.
    scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=4, pct_start=1.0)
    for _ in range(3):
        scheduler.step()
    with pytest.raises(ValueError, match="phase 1 is empty at step 4"):
        scheduler.step()
    assert scheduler.last_epoch == 3
    torch_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(torch_optimizer, max_lr=1.0, total_steps=10, pct_start=0.1)


# Metric sequences with plateaus, small improvements below and above the thresholds, and
# rises: the counters, the cooldown and the floors all come into play.
_LOSSES = [10.0, 9.0, 9.0, 9.0, 9.0, 8.9995, 8.99, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 7.0, 7.5, 7.4, 7.3, 7.2,
           7.0, 7.0, 7.0, 7.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 5.99999, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0,
           5.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]

PLATEAU = [
    dict(),
    dict(patience=0),
    dict(patience=2, factor=0.5),
    dict(patience=1, factor=0.5, cooldown=3),
    dict(patience=2, factor=0.5, threshold=0.01),
    dict(patience=2, factor=0.5, threshold=0.5, threshold_mode="abs"),
    dict(patience=1, factor=0.3, threshold=0.0, threshold_mode="abs", cooldown=1),
    dict(patience=0, factor=0.1, min_lr=0.004),
    dict(patience=0, factor=0.5, min_lr=[0.01, 0.001]),
    dict(patience=0, factor=0.9, eps=0.05),
    dict(patience=1, factor=0.0),
]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("options", PLATEAU, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_reduce_on_plateau_matches_torch(options, mode, torch):
    metrics = _LOSSES if mode == "min" else [-m for m in _LOSSES]
    convx_optimizer, torch_optimizer = _pair(torch, "SGD", [0.1, 0.05])
    convx_scheduler = lr_scheduler.ReduceLROnPlateau(convx_optimizer, mode=mode, **options)
    torch_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_optimizer, mode=mode, **options)
    _run_together(convx_scheduler, torch_scheduler, convx_optimizer, torch_optimizer, len(metrics), metrics=metrics)
    for attribute in ("best", "num_bad_epochs", "cooldown_counter", "min_lrs"):
        assert getattr(convx_scheduler, attribute) == getattr(torch_scheduler, attribute)


def test_reduce_on_plateau_metric_forms():
    scheduler = lr_scheduler.ReduceLROnPlateau(optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=0.1), patience=0)
    scheduler.step(np.float32(2.0))
    scheduler.step(np.array(3.0))
    scheduler.step(4)
    assert scheduler.best == 2.0
    assert scheduler.get_last_lr() == pytest.approx([0.001])
    for bad in ([1.0], np.array([1.0]), "1.0", True, None):
        with pytest.raises(TypeError, match="metrics must be a real number"):
            scheduler.step(bad)
    assert scheduler.last_epoch == 3


def _fresh(name, options, optimizer_name="SGD", optimizer_options=None):
    model = nn.Linear(2, 1, rng=0)
    optimizer = getattr(optim, optimizer_name)(_groups([0.1, 0.3], model), **(optimizer_options or {}))
    return optimizer, getattr(lr_scheduler, name)(optimizer, **options)


ROUND_TRIPS = [
    ("StepLR", dict(step_size=3, gamma=0.5), {}),
    ("MultiStepLR", dict(milestones=[2, 6, 9]), {}),
    ("ExponentialLR", dict(gamma=0.8), {}),
    ("CosineAnnealingLR", dict(T_max=6, eta_min=0.01), {}),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=30, three_phase=True), dict(momentum=0.9)),
    ("ReduceLROnPlateau", dict(patience=1, cooldown=2, factor=0.5), {}),
]


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=lambda c: c[0])
def test_state_dict_round_trip(case):
    """Interrupt a schedule, restore its state (and the optimizer's groups) into new objects, and
    carry on: the same rates as the run that was never interrupted."""
    name, options, optimizer_options = case
    step = (lambda s, i: s.step(_LOSSES[i])) if name == "ReduceLROnPlateau" else (lambda s, i: s.step())
    optimizer, scheduler = _fresh(name, options, optimizer_options=optimizer_options)
    for i in range(10):
        step(scheduler, i)
    state = scheduler.state_dict()
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    assert "optimizer" not in state
    state_copy = scheduler.state_dict()

    resumed_optimizer, resumed = _fresh(name, options, optimizer_options=optimizer_options)
    for group, saved in zip(resumed_optimizer.param_groups, groups):
        group.update(saved)
    resumed.load_state_dict(state)
    for i in range(10, 25):
        step(scheduler, i)
        step(resumed, i)
        assert resumed.get_last_lr() == scheduler.get_last_lr()
        assert resumed.last_epoch == scheduler.last_epoch
        for a, b in zip(resumed_optimizer.param_groups, optimizer.param_groups):
            assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}
    # The state handed out is a copy: stepping on did not change it.
    assert state == state_copy


def test_load_state_dict_refuses_another_schedulers_state():
    _, step_lr = _fresh("StepLR", dict(step_size=2))
    _, cosine = _fresh("CosineAnnealingLR", dict(T_max=5))
    with pytest.raises(KeyError, match="missing keys .*T_max"):
        step_lr.load_state_dict(cosine.state_dict())
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        step_lr.load_state_dict([("last_epoch", 3)])


def test_get_last_lr_is_a_copy():
    optimizer, scheduler = _fresh("StepLR", dict(step_size=2))
    scheduler.get_last_lr()[0] = 99.0
    assert scheduler.get_last_lr() == [0.1, 0.3]
    assert _group_values(optimizer, "lr") == [0.1, 0.3]


def test_public_names():
    assert optim.lr_scheduler is lr_scheduler
    for name in ("LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR",
                 "ReduceLROnPlateau"):
        assert getattr(optim, name) is getattr(lr_scheduler, name)
        assert name in optim.__all__ and name in lr_scheduler.__all__
    assert lr_scheduler._LRScheduler is lr_scheduler.LRScheduler
    assert issubclass(lr_scheduler.ReduceLROnPlateau, lr_scheduler.LRScheduler)


def test_custom_subclass_of_the_base():
    class Halving(lr_scheduler.LRScheduler):
        def get_lr(self):
            return [base * 0.5**self.last_epoch for base in self.base_lrs]

    optimizer, _ = _fresh("StepLR", dict(step_size=100))
    scheduler = Halving(optimizer)
    scheduler.step()
    assert scheduler.get_last_lr() == [0.05, 0.15]

    class Short(lr_scheduler.LRScheduler):
        def get_lr(self):
            return [1.0]

    with pytest.raises(ValueError, match=r"Short.get_lr\(\) returned 1 rates for 2 parameter groups"):
        Short(optimizer)
    assert _group_values(optimizer, "lr") == [0.05, 0.15]


# -- the optimizer uses what the scheduler sets ----------------------------------------------------------------


def _model(dtype):
    return nn.Sequential(nn.Conv2d(2, 3, 3, dtype=dtype, rng=0), nn.Linear(4, 3, dtype=dtype, rng=1))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    ("SGD", dict(lr=0.1, momentum=0.9), "StepLR", dict(step_size=2, gamma=0.5)),
    ("SGD", dict(lr=0.1, momentum=0.9), "OneCycleLR", dict(max_lr=0.5, total_steps=8)),
    ("Adam", dict(lr=0.01), "OneCycleLR", dict(max_lr=0.05, total_steps=8, three_phase=True)),
    ("AdamW", dict(lr=0.01), "CosineAnnealingLR", dict(T_max=3)),
    ("RMSprop", dict(lr=0.01), "ExponentialLR", dict(gamma=0.7)),
], ids=lambda c: f"{c[0]}-{c[2]}")
def test_scheduled_updates_match_torch(case, dtype, compiled, torch, rng, monkeypatch):
    """Parameters trained with a scheduled rate (and momentum/betas) follow PyTorch's."""
    monkeypatch.setattr(optim.Optimizer, "compiled", compiled)
    optimizer_name, optimizer_options, scheduler_name, scheduler_options = case
    model = _model(dtype)
    torch_params = [torch.from_numpy(p.data.copy()).requires_grad_(True) for p in model.parameters()]
    optimizer = getattr(optim, optimizer_name)(model.parameters(), **optimizer_options)
    torch_optimizer = getattr(torch.optim, optimizer_name)(torch_params, **optimizer_options)
    scheduler = getattr(lr_scheduler, scheduler_name)(optimizer, **scheduler_options)
    torch_scheduler = getattr(torch.optim.lr_scheduler, scheduler_name)(torch_optimizer, **scheduler_options)
    for _ in range(8):
        for param, torch_param in zip(model.parameters(), torch_params):
            grad = (0.5 * param.data + rng.standard_normal(param.data.shape)).astype(dtype)
            param.module.grads[param.key] = grad
            torch_param.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        torch_optimizer.step()
        scheduler.step()
        torch_scheduler.step()
        assert scheduler.get_last_lr() == torch_scheduler.get_last_lr()
        for param, torch_param in zip(model.parameters(), torch_params):
            assert_close(param.data, torch_param.detach().numpy())


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_a_changed_rate_changes_the_update(compiled, monkeypatch):
    monkeypatch.setattr(optim.Optimizer, "compiled", compiled)
    layer = nn.Linear(2, 1, bias=False, dtype=np.float64, rng=0)
    optimizer = optim.SGD(layer.parameters(), lr=1.0)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.25)
    moves = []
    for _ in range(3):
        layer.grads["weight"] = np.ones((1, 2))
        before = layer.params["weight"].copy()
        optimizer.step()
        scheduler.step()
        moves.append(float((before - layer.params["weight"])[0, 0]))
    assert moves == pytest.approx([1.0, 0.25, 0.0625], rel=1e-12)


# -- arguments -------------------------------------------------------------------------------------------------


def _sgd(momentum=0.0, groups=1):
    model = nn.Linear(2, 1, rng=0)
    params = model.parameters()
    if groups == 2:
        return optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.1, momentum=momentum)
    return optim.SGD(params, lr=0.1, momentum=momentum)


BAD = [
    ("StepLR", dict(step_size=0), ValueError, "step_size must be positive, got 0"),
    ("StepLR", dict(step_size=2.0), TypeError, "step_size must be an int, got 2.0"),
    ("StepLR", dict(step_size=True), TypeError, "step_size must be an int"),
    ("StepLR", dict(step_size=2, gamma=-0.1), ValueError, "gamma must be at least 0.0, got -0.1"),
    ("StepLR", dict(step_size=2, gamma=math.nan), ValueError, "gamma must be finite"),
    ("StepLR", dict(step_size=2, gamma="0.1"), TypeError, "gamma must be a real number"),
    ("StepLR", dict(step_size=2, last_epoch=-2), ValueError, "last_epoch must be at least -1, got -2"),
    ("MultiStepLR", dict(milestones=[3, 2]), ValueError, r"milestones must be strictly increasing, got \[3, 2\]"),
    ("MultiStepLR", dict(milestones=[2, 2]), ValueError, "strictly increasing"),
    ("MultiStepLR", dict(milestones=[-1, 2]), ValueError, r"milestones\[0\] must be at least 0"),
    ("MultiStepLR", dict(milestones=[1.5]), TypeError, r"milestones\[0\] must be an int"),
    ("MultiStepLR", dict(milestones=5), TypeError, "milestones must be a list of ints"),
    ("ExponentialLR", dict(gamma=math.inf), ValueError, "gamma must be finite"),
    ("CosineAnnealingLR", dict(T_max=0), ValueError, "T_max must be positive, got 0"),
    ("CosineAnnealingLR", dict(T_max=5, eta_min=-1.0), ValueError, "eta_min must be at least 0.0"),
    ("OneCycleLR", dict(max_lr=1.0), ValueError, "needs total_steps, or both epochs and steps_per_epoch"),
    ("OneCycleLR", dict(max_lr=1.0, epochs=3), ValueError, "needs total_steps, or both"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=0), ValueError, "total_steps must be positive, got 0"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10.0), TypeError, "total_steps must be an int"),
    ("OneCycleLR", dict(max_lr=1.0, epochs=0, steps_per_epoch=3), ValueError, "epochs must be positive"),
    ("OneCycleLR", dict(max_lr=1.0, epochs=2, steps_per_epoch=-3), ValueError, "steps_per_epoch must be positive"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, epochs=2, steps_per_epoch=4), ValueError,
     r"total_steps=10 disagrees with epochs \* steps_per_epoch = 2 \* 4 = 8"),
    ("OneCycleLR", dict(max_lr=0.0, total_steps=10), ValueError, "max_lr must be greater than 0.0"),
    ("OneCycleLR", dict(max_lr=[1.0, 2.0], total_steps=10), ValueError, "max_lr must be a number or a list of 1"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, pct_start=1.5), ValueError, r"pct_start must be in \[0, 1\]"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, pct_start=-0.1), ValueError, "pct_start must be at least 0"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, anneal_strategy="exp"), ValueError,
     "anneal_strategy must be 'cos' or 'linear', got 'exp'"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, div_factor=0), ValueError, "div_factor must be greater than 0"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, final_div_factor=-1.0), ValueError, "final_div_factor"),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=10, three_phase=1), TypeError, "three_phase must be a bool"),
    ("ReduceLROnPlateau", dict(mode="lowest"), ValueError, "mode must be 'min' or 'max', got 'lowest'"),
    ("ReduceLROnPlateau", dict(threshold_mode="relative"), ValueError, "threshold_mode must be 'rel' or 'abs'"),
    ("ReduceLROnPlateau", dict(factor=1.0), ValueError, "factor must be less than 1.0, got 1.0"),
    ("ReduceLROnPlateau", dict(factor=-0.5), ValueError, "factor must be at least 0.0"),
    ("ReduceLROnPlateau", dict(patience=-1), ValueError, "patience must be at least 0, got -1"),
    ("ReduceLROnPlateau", dict(cooldown=1.5), TypeError, "cooldown must be an int"),
    ("ReduceLROnPlateau", dict(threshold=-1e-4), ValueError, "threshold must be at least 0.0"),
    ("ReduceLROnPlateau", dict(min_lr=[0.0, 0.1]), ValueError, "min_lr must be a number or a list of 1"),
    ("ReduceLROnPlateau", dict(min_lr=-1.0), ValueError, "min_lr must be at least 0.0"),
    ("ReduceLROnPlateau", dict(eps=-1.0), ValueError, "eps must be at least 0.0"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: f"{c[0]}-{c[3][:40]}")
def test_bad_arguments(case):
    name, options, error, match = case
    optimizer = _sgd()
    lrs = _group_values(optimizer, "lr")
    with pytest.raises(error, match=match):
        getattr(lr_scheduler, name)(optimizer, **options)
    assert _group_values(optimizer, "lr") == lrs
    assert "initial_lr" not in optimizer.param_groups[0]


def test_bad_optimizer_and_momentum_bounds(torch):
    for name, options in [("StepLR", dict(step_size=1)), ("ReduceLROnPlateau", {}),
                          ("OneCycleLR", dict(max_lr=1.0, total_steps=5))]:
        with pytest.raises(TypeError, match="optimizer must be a convx.optim.Optimizer, got SGD"):
            getattr(lr_scheduler, name)(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), **options)
    adagrad = optim.Adagrad(nn.Linear(2, 1, rng=0).parameters())
    with pytest.raises(ValueError, match="cycle_momentum=True needs an optimizer with momentum or betas; Adagrad"):
        lr_scheduler.OneCycleLR(adagrad, max_lr=1.0, total_steps=5)
    adam = optim.Adam(nn.Linear(2, 1, rng=0).parameters())
    with pytest.raises(ValueError, match="max_momentum must be less than 1.0"):
        lr_scheduler.OneCycleLR(adam, max_lr=1.0, total_steps=5, max_momentum=1.0)
    with pytest.raises(ValueError, match=r"base_momentum\[1\] must be at least 0.0"):
        lr_scheduler.OneCycleLR(_sgd(0.9, groups=2), max_lr=1.0, total_steps=5, base_momentum=[0.1, -0.1])


def test_plateau_min_lr_list_and_a_group_added_later():
    optimizer = _sgd(groups=2)
    scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, min_lr=[0.0, 0.05])
    extra = nn.Linear(1, 1, rng=0)
    optimizer.add_param_group({"params": extra.parameters(), "lr": 0.2})
    scheduler.step(1.0)
    with pytest.raises(RuntimeError, match="min_lr was a list for 2"):
        scheduler.step(2.0)
    broadcast = lr_scheduler.ReduceLROnPlateau(_sgd(groups=2), patience=0, min_lr=0.01)
    broadcast.optimizer.add_param_group({"params": nn.Linear(1, 1, rng=0).parameters(), "lr": 0.2})
    broadcast.step(1.0)
    broadcast.step(2.0)
    assert broadcast.min_lrs == [0.01, 0.01, 0.01]
    assert broadcast.get_last_lr() == pytest.approx([0.01, 0.01, 0.02])
