"""The activations of convx.functional, activation_backward and the convx.nn activation layers.

Each activation, forward and gradient (from the forward's input and, where allowed, from its
output), float32 and float64, against convx.reference.activations (float64, from the formulas)
and against PyTorch (torch.nn.functional, gradients by autograd): odd shapes, sizes around the
kernels' thread splits, every memory layout, NaN, +-inf, -0.0 and the branch points, 1 to 3
threads, sub-batches, in place, and bad arguments.

Against PyTorch, NaN and infinities must come out where PyTorch puts them (derived from
PyTorch at test time), zeros with PyTorch's sign, everything else within the dtype's tolerance.
The output route (``saved_is='output'``) is held to PyTorch's own output-based backward: its
in-place ops (``relu6_``, ``leaky_relu_``, ``elu_``, ``selu_``) differentiate from their
result, as ReLU, Sigmoid and Tanh always do.

Where convx deliberately differs from PyTorch, the test says so:

* float32 ``gelu(+inf)`` is ``+inf`` (``x * Phi(x)``, the mathematically right value) where
  PyTorch's vectorised float32 erf gives NaN;
* convx's GELU uses ``erfc(-x / sqrt 2)``, PyTorch ``1 + erf(x / sqrt 2)``, which cancels for
  x << 0 (float32 ``gelu(-6)`` is 0 there, relative error 1): convx is held to the float64
  reference at 1e-5 relative over [-8, -2], and to PyTorch only within the usual tolerance;
* PyTorch's float64 Hardsigmoid backward multiplies by float32's 1/6 (0.1666666716...,
  3e-8 off); convx uses the float64 1/6, held to the reference at 1e-10.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

import convx
import convx._batching
import convx._core
import convx.functional as F
from convx import nn
from convx.functional import activations as activations_module
from convx.reference import activations as R

DTYPE_IDS = ["float32", "float64"]


# ------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Act:
    """One activation with its forward options, as convx.functional and activation_backward name it."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name + "".join(f",{key}={value}" for key, value in self.options.items())

    @property
    def has_inplace(self) -> bool:
        return self.name in ("relu", "relu6", "leaky_relu", "elu", "selu", "silu", "hardswish", "hardsigmoid")

    @property
    def inplace_allowed(self) -> bool:
        """In place needs the output to tell the branch apart: a non-negative slope or alpha."""
        return self.has_inplace and self.options.get("negative_slope", 0) >= 0 and self.options.get("alpha", 0) >= 0

    @property
    def routes(self) -> list[str]:
        """The ``saved_is`` values activation_backward accepts for this activation."""
        routes = [] if self.name in ("sigmoid", "tanh") else ["input"]
        if self.name in ("relu", "relu6", "sigmoid", "tanh", "selu") or (
            self.name in ("leaky_relu", "elu") and self.inplace_allowed
        ):
            routes.append("output")
        return routes

    def forward(self, x, **extra):
        return getattr(F, self.name)(x, **self.options, **extra)

    def backward(self, grad_out, x, y, route):
        saved = x if route == "input" else y
        return F.activation_backward(self.name, grad_out, saved, saved_is=route, **self.options)

    def reference(self, x):
        return getattr(R, self.name)(x, **self.options)

    def reference_grad(self, grad_out, x):
        return grad_out.astype(np.float64) * R.derivative(self.name, x, **self.options)

    def kinks(self) -> list[float]:
        """Where the derivative jumps (kept clear of in gradient checks)."""
        points = {"relu": [0.0], "leaky_relu": [0.0], "elu": [0.0], "selu": [0.0], "relu6": [0.0, 6.0],
                  "hardswish": [-3.0, 3.0], "hardsigmoid": [-3.0, 3.0]}.get(self.name, [])
        if self.name == "softplus":
            points = [self.options.get("threshold", 20.0) / self.options.get("beta", 1.0)]
        return points

    def torch(self, torch, x, grad_out, route):
        """PyTorch's output and input gradient, by autograd (output-based for route 'output')."""
        leaf = torch.from_numpy(np.array(x, copy=True)).requires_grad_(True)
        function = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}.get(self.name)
        if function is None:
            function = getattr(torch.nn.functional, self.name)
        if route == "output" and self.name in ("relu6", "leaky_relu", "elu", "selu"):
            y = function(leaf.clone(), **self.options, inplace=True)
        else:
            y = function(leaf, **self.options)
        y.backward(torch.from_numpy(np.array(grad_out, copy=True)))
        return y.detach().numpy(), leaf.grad.numpy()


CASES = [
    Act("relu"),
    Act("relu6"),
    Act("leaky_relu"),
    Act("leaky_relu", dict(negative_slope=0.2)),
    Act("leaky_relu", dict(negative_slope=0.0)),
    Act("leaky_relu", dict(negative_slope=-0.3)),
    Act("elu"),
    Act("elu", dict(alpha=0.7)),
    Act("elu", dict(alpha=0.0)),
    Act("elu", dict(alpha=-0.5)),
    Act("selu"),
    Act("sigmoid"),
    Act("tanh"),
    Act("silu"),
    Act("gelu"),
    Act("gelu", dict(approximate="tanh")),
    Act("hardswish"),
    Act("hardsigmoid"),
    Act("softplus"),
    Act("softplus", dict(beta=2.0, threshold=5.0)),
    Act("softplus", dict(beta=-1.5, threshold=3.0)),
    Act("softplus", dict(beta=0.5, threshold=1.0)),
]
# One case per activation (and GELU's approximation), for the tests that are about arrays, not options.
PLAIN = [case for case in CASES if not case.options or case.options == dict(approximate="tanh")]
ROUTED = [(case, route) for case in CASES for route in case.routes]


def routed_params(cases=ROUTED, known_bugs=None):
    """(case, route) parameters, the known bugs (keyed by (case id or name, route)) marked as strict xfails."""
    params = []
    for case, route in cases:
        known = known_bugs or {}
        reason = known.get((case.id, route), known.get((case.name, route)))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, route, id=f"{case.id}-{route}", marks=marks))
    return params


def away_from(x, points, margin=1e-3):
    """Move entries off the given points, where a derivative jumps."""
    for point in points:
        x = np.where(np.abs(x - point) < margin, x + 10 * margin, x)
    return x


def assert_matches_torch(actual, expected, dtype, *, what, rtol=None, signed_zeros=False):
    """NaN and +-inf exactly where PyTorch has them, the rest within the dtype's tolerance
    (unscaled: the specials include values of 1e30); with ``signed_zeros``, zeros of PyTorch's sign."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == np.dtype(dtype), (what, actual.shape, actual.dtype)
    nan, inf = np.isnan(expected), np.isinf(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=f"{what}: NaN where PyTorch has none or vice versa")
    np.testing.assert_array_equal(np.isinf(actual), inf, err_msg=f"{what}: inf where PyTorch has none or vice versa")
    np.testing.assert_array_equal(actual[inf], expected[inf], err_msg=f"{what}: infinities of the wrong sign")
    if signed_zeros:
        zero = (actual == 0) & (expected == 0)
        np.testing.assert_array_equal(np.signbit(actual[zero]), np.signbit(expected[zero]),
                                      err_msg=f"{what}: zeros of the other sign than PyTorch's")
    finite = ~nan & ~inf
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol or tol["rtol"], atol=tol["atol"],
                               err_msg=what)


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield original
    convx.set_num_threads(original)


# ------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case, route", routed_params())
def test_forward_and_backward_match_the_reference(case, route, dtype, rng):
    x = (4 * rng.standard_normal((3, 5, 7))).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y = case.forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, case.reference(x), dtype)
    grad_x = case.backward(grad_out, x, y, route)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert_close(grad_x, case.reference_grad(grad_out, x), dtype)


NAMES = sorted({case.name for case in CASES})


@pytest.mark.parametrize("name", NAMES)
def test_default_route_is_backward_reads(name, rng):
    """Without saved_is, activation_backward reads what BACKWARD_READS says ('input' for selu)."""
    case = next(c for c in CASES if c.name == name)
    default = activations_module.BACKWARD_READS.get(name, "input")
    x = away_from(rng.standard_normal(20) * 3, case.kinks())
    grad_out = rng.standard_normal(20)
    saved = x if default == "input" else case.forward(x)
    assert_close(F.activation_backward(name, grad_out, saved), case.reference_grad(grad_out, x))


def test_backward_reads_names_every_activation():
    assert set(activations_module.BACKWARD_READS) == set(NAMES)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=DTYPE_IDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_accurate_far_left(approximate, dtype):
    """convx computes Phi(x) as erfc(-x / sqrt 2) / 2: accurate where 1 + erf(x / sqrt 2) (PyTorch)
    cancels, as x -> -inf. Held to the float64 reference relative to the (tiny) values."""
    x = np.linspace(-8.0, -2.0, 2001).astype(dtype)
    ones = np.ones_like(x)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    if approximate == "none":
        np.testing.assert_allclose(F.gelu(x), R.gelu(x), rtol=rtol, atol=0)
        np.testing.assert_allclose(F.activation_backward("gelu", ones, x), R.derivative("gelu", x), rtol=rtol, atol=0)
    else:
        # The tanh form's 1 + tanh(.) cancels in PyTorch and convx alike (the formula, not the code):
        # only the usual tolerance, relative to the largest value.
        assert_close(F.gelu(x, approximate="tanh"), R.gelu(x, approximate="tanh"), dtype)


# ------------------------------------------------------------------------------- PyTorch
def _torch_rtol(case, dtype, gradient):
    # PyTorch's float64 Hardsigmoid gradient is grad * float(1/6) (0.16666667163..., 3e-8 off);
    # convx's is grad / 6 in float64, held to the reference at 1e-10 above.
    if gradient and case.name == "hardsigmoid" and dtype == np.float64:
        return 1e-7
    return None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case, route", routed_params())
def test_matches_torch(case, route, dtype, torch, rng):
    x = (4 * rng.standard_normal((2, 3, 5, 7))).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y = case.forward(x)
    y_torch, grad_torch = case.torch(torch, x, grad_out, route)
    assert_matches_torch(y, y_torch, dtype, what="output")
    assert_matches_torch(case.backward(grad_out, x, y, route), grad_torch, dtype, what="grad_x",
                         rtol=_torch_rtol(case, dtype, True))


def _specials(case, dtype):
    """+-inf, +-0, the branch points of every activation (0, 6, +-3, a softplus threshold / beta,
    and the float next to each), values that saturate or overflow an exponential; tiled so that
    each lands in vector lanes and in the scalar tail."""
    dtype = np.dtype(dtype)
    points = [0.0, 6.0, 3.0, -3.0, 20.0, 1.0, -1.0, 0.5]
    if case.name == "softplus":
        points.append(case.options.get("threshold", 20.0) / case.options.get("beta", 1.0))
    values = [np.inf, -np.inf, -0.0, 1e30, -1e30, 1e-30, -1e-30, 88.8, -88.8, 100.0, -100.0, 710.0, -710.0, 1e5]
    for point in points:
        point = dtype.type(point)
        values += [point, np.nextafter(point, dtype.type(np.inf)), np.nextafter(point, dtype.type(-np.inf))]
    values = np.array(values, dtype=dtype)
    return np.concatenate([values, values[::-1], values[3:], values[:5]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case, route", routed_params())
def test_infinities_zeros_and_branch_points_match_torch(case, route, dtype, torch, rng):
    x = _specials(case, dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y = case.forward(x)
    y_torch, grad_torch = case.torch(torch, x, grad_out, route)
    if case.name == "gelu" and not case.options and dtype == np.float32:
        # Deliberate: x * Phi(x) at +inf is +inf; PyTorch's vectorised float32 erf makes it NaN.
        y_torch = np.where(np.isposinf(x), np.inf, y_torch).astype(dtype)
    assert_matches_torch(y, y_torch, dtype, what="output")
    assert_matches_torch(case.backward(grad_out, x, y, route), grad_torch, dtype, what="grad_x",
                         rtol=_torch_rtol(case, dtype, True))


ZERO_SIGN_BUGS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case, route", routed_params(known_bugs=ZERO_SIGN_BUGS))
def test_signed_zeros_match_torch(case, route, dtype, torch, rng):
    """-0.0 and +0.0 in, and whatever zeros come out (forward and gradient) have PyTorch's sign."""
    specials = _specials(case, dtype)
    x = np.concatenate([np.tile(np.array([-0.0, 0.0], dtype=dtype), 9), specials[np.isfinite(specials)]])
    grad_out = np.resize(np.array([1.0, -1.0, 0.0, -0.0, 2.5], dtype=dtype), x.shape)
    y = case.forward(x)
    y_torch, grad_torch = case.torch(torch, x, grad_out, route)
    assert_matches_torch(y, y_torch, dtype, what="output", signed_zeros=True)
    assert_matches_torch(case.backward(grad_out, x, y, route), grad_torch, dtype, what="grad_x",
                         rtol=_torch_rtol(case, dtype, True), signed_zeros=True)


NAN_BUGS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case, route", routed_params(known_bugs=NAN_BUGS))
def test_nan_input_propagates_as_in_torch(case, route, dtype, torch, rng):
    # 448 elements: PyTorch's vector loops cover them all. Its scalar tail can treat NaN otherwise
    # (relu6's backward: the vector loop stops the gradient at NaN, the scalar tail passes it).
    x = np.tile(np.array([np.nan, 1.0, -1.0, 0.0, 7.0, -4.0, np.nan], dtype=dtype), 64)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y = case.forward(x)
    y_torch, grad_torch = case.torch(torch, x, grad_out, route)
    assert_matches_torch(y, y_torch, dtype, what="output")
    assert_matches_torch(case.backward(grad_out, x, y, route), grad_torch, dtype, what="grad_x",
                         rtol=_torch_rtol(case, dtype, True))


GRAD_BUGS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case, route", routed_params(known_bugs=GRAD_BUGS))
def test_non_finite_grad_out_propagates_as_in_torch(case, route, dtype, torch):
    """grad_out NaN, +inf and -inf against every finite special x (each x with each grad_out)."""
    specials = _specials(case, dtype)
    x = np.repeat(specials[np.isfinite(specials)], 3)
    grad_out = np.resize(np.array([np.nan, np.inf, -np.inf], dtype=dtype), x.shape)
    y = case.forward(x)
    _, grad_torch = case.torch(torch, x, grad_out, route)
    assert_matches_torch(case.backward(grad_out, x, y, route), grad_torch, dtype, what="grad_x",
                         rtol=_torch_rtol(case, dtype, True))


# ------------------------------------------------------------------------- shapes and layouts
SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (1, 1, 1, 1), (2, 3, 4, 5), (2, 1, 3, 2, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", PLAIN, ids=lambda case: case.id)
def test_shapes(case, shape, dtype, rng):
    x = np.asarray(3 * rng.standard_normal(shape), dtype=dtype)
    grad_out = np.asarray(rng.standard_normal(shape), dtype=dtype)
    y = case.forward(x)
    assert isinstance(y, np.ndarray) and y.shape == shape and y.dtype == dtype
    assert_close(y, case.reference(x), dtype)
    for route in case.routes:
        grad_x = case.backward(grad_out, x, y, route)
        assert isinstance(grad_x, np.ndarray) and grad_x.shape == shape and grad_x.dtype == dtype
        assert_close(grad_x, case.reference_grad(grad_out, x), dtype)


# Around the kernels' splits of one call between threads (32768 elements per thread at least;
# the backward counts two elements per element) and sub-batches.
SPLIT_SIZES = [32767, 32768, 32769, 49153, 65535, 65537, 98309]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("size", SPLIT_SIZES)
def test_sizes_around_thread_splits(size, dtype, rng, restore_threads):
    convx.set_num_threads(3)
    x = (4 * rng.standard_normal(size)).astype(dtype)
    grad_out = rng.standard_normal(size).astype(dtype)
    for case in (Act("relu6"), Act("elu", dict(alpha=0.7)), Act("softplus", dict(beta=2.0, threshold=5.0)),
                 Act("sigmoid")):
        y = case.forward(x)
        assert_close(y, case.reference(x), dtype)
        for route in case.routes:
            assert_close(case.backward(grad_out, x, y, route), case.reference_grad(grad_out, x), dtype)


def _layouts(rng, dtype):
    """(name, array) pairs: views that are not C-contiguous, Fortran order, read-only, reversed."""
    base = (3 * rng.standard_normal((6, 8, 5))).astype(dtype)
    read_only = base.copy()
    read_only.setflags(write=False)
    packed = np.zeros(base.nbytes + 1, dtype=np.uint8)
    misaligned = np.ndarray(base.shape, dtype=dtype, buffer=packed[1:].data)  # from a packed buffer
    misaligned[...] = base
    return [
        ("misaligned", misaligned),
        ("strided", base[:, ::2, 1:]),
        ("transposed", base.transpose(2, 0, 1)),
        ("fortran", np.asfortranarray(base)),
        ("reversed", base[::-1, :, ::-1]),
        ("read-only", read_only),
        ("read-only-strided", read_only[::2]),
        ("column", base[:, 3, 2]),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", PLAIN, ids=lambda case: case.id)
def test_any_layout_gives_the_contiguous_result_and_is_left_alone(case, dtype, rng):
    for layout, x in _layouts(rng, dtype):
        grad_out = np.asfortranarray(rng.standard_normal(x.shape).astype(dtype))[..., ::-1] if x.ndim > 1 else \
            rng.standard_normal(x.shape).astype(dtype)[::-1]
        before = x.copy(), grad_out.copy()
        y = case.forward(x)
        np.testing.assert_array_equal(y, case.forward(np.ascontiguousarray(x)), err_msg=layout)
        for route in case.routes:
            saved = x if route == "input" else y
            expected = case.backward(np.ascontiguousarray(grad_out), np.ascontiguousarray(x),
                                     np.ascontiguousarray(y), route)
            np.testing.assert_array_equal(case.backward(grad_out, x, saved, route), expected, err_msg=layout)
            if route == "output":
                # The output-based gradient from a non-contiguous y.
                y_view = np.asfortranarray(y)
                np.testing.assert_array_equal(case.backward(grad_out, x, y_view, route), expected, err_msg=layout)
        np.testing.assert_array_equal(x, before[0], err_msg=f"{layout}: x modified")
        np.testing.assert_array_equal(grad_out, before[1], err_msg=f"{layout}: grad_out modified")


@pytest.mark.parametrize("case", PLAIN, ids=lambda case: case.id)
def test_inputs_are_never_modified(case, rng):
    x = 3 * rng.standard_normal((4, 9))
    grad_out = rng.standard_normal(x.shape)
    x_before, grad_before = x.copy(), grad_out.copy()
    y = case.forward(x)
    assert y is not x and not np.shares_memory(y, x)
    y_before = y.copy()
    for route in case.routes:
        grad_x = case.backward(grad_out, x, y, route)
        assert not np.shares_memory(grad_x, grad_out) and not np.shares_memory(grad_x, x)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(grad_out, grad_before)


def test_lists_are_accepted_and_scalars_refused():
    np.testing.assert_array_equal(F.relu([[-1.0, 2.0]]), [[0.0, 2.0]])
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        F.relu(1.5)


# ------------------------------------------------------------------------ threads and batches
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", PLAIN, ids=lambda case: case.id)
def test_one_two_and_three_threads_agree(case, dtype, rng, restore_threads):
    x = (4 * rng.standard_normal(3 * 32768 + 11)).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for n_threads in (1, 2, 3):
        convx.set_num_threads(n_threads)
        y = case.forward(x)
        results.append([y] + [case.backward(grad_out, x, y, route) for route in case.routes])
    for other in results[1:]:
        for expected, actual in zip(results[0], other):
            np.testing.assert_array_equal(actual, expected)


def _count_calls(monkeypatch, name):
    calls = []
    kernel = getattr(convx._core, name)

    def counted(*args):
        calls.append(len(args[0]))
        return kernel(*args)

    monkeypatch.setattr(convx._core, name, counted)
    return calls


@pytest.mark.parametrize("case", [Act("gelu"), Act("leaky_relu", dict(negative_slope=0.2))], ids=lambda c: c.id)
def test_sub_batches_give_the_result_of_one_call(case, rng, monkeypatch, restore_threads):
    convx.set_num_threads(2)
    x = 3 * rng.standard_normal((7, 11, 13))
    grad_out = rng.standard_normal(x.shape)
    y_whole = case.forward(x)
    grads_whole = [case.backward(grad_out, x, y_whole, route) for route in case.routes]
    forward_calls = _count_calls(monkeypatch, "activation_forward")
    backward_calls = _count_calls(monkeypatch, "activation_backward")
    # At most 2 * 7 elements per kernel call, so the functional's own loop does the splitting.
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 7)
    y = case.forward(x)
    np.testing.assert_array_equal(y, y_whole)
    for route, expected in zip(case.routes, grads_whole):
        np.testing.assert_array_equal(case.backward(grad_out, x, y, route), expected)
    assert len(forward_calls) >= x.size // 14 and max(forward_calls) <= 14 and sum(forward_calls) == x.size
    assert len(backward_calls) >= len(case.routes) * (x.size // 14)


def test_activations_read_the_shared_sub_batch_setting(rng, monkeypatch):
    calls = _count_calls(monkeypatch, "activation_forward")
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 7)
    F.relu(rng.standard_normal(1000))
    assert len(calls) > 1


def test_ops_from_several_python_threads_at_once(rng):
    xs = [3 * rng.standard_normal((64, 257)).astype(dtype) for dtype in (np.float32, np.float64) for _ in range(4)]
    cases = [Act("gelu"), Act("softplus"), Act("elu", dict(alpha=0.7)), Act("hardswish")]

    def run(index):
        case, x = cases[index % len(cases)], xs[index % len(xs)]
        y = case.forward(x)
        return [y] + [case.backward(x, x, y, route) for route in case.routes]

    serial = [run(index) for index in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(run, range(24)))
    for expected, actual in zip(serial, parallel):
        for e, a in zip(expected, actual):
            np.testing.assert_array_equal(a, e)


# -------------------------------------------------------------------------------- in place
INPLACE = [case for case in CASES if case.inplace_allowed]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", INPLACE, ids=lambda case: case.id)
def test_inplace_overwrites_exactly_the_input_and_returns_it(case, dtype, rng):
    storage = (3 * rng.standard_normal(40)).astype(dtype)
    x = storage[5:35].reshape(5, 6)  # C-contiguous, inside a larger buffer
    expected = case.forward(x)
    outside = np.concatenate([storage[:5], storage[35:]])
    y = case.forward(x, inplace=True)
    assert y is x
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(np.concatenate([storage[:5], storage[35:]]), outside)


@pytest.mark.parametrize("case", [case for case in CASES if case.has_inplace], ids=lambda case: case.id)
def test_inplace_refuses_what_it_cannot_overwrite(case, rng):
    base = 3 * rng.standard_normal((6, 8))
    read_only = base.copy()
    read_only.setflags(write=False)
    if not case.inplace_allowed:
        x = base.copy()
        name = "negative_slope" if case.name == "leaky_relu" else "alpha"
        with pytest.raises(ValueError, match=f"inplace=True needs a non-negative {name}"):
            case.forward(x, inplace=True)
        np.testing.assert_array_equal(x, base)
        return
    packed = np.zeros(base.nbytes + 1, dtype=np.uint8)
    misaligned = np.ndarray(base.shape, dtype=base.dtype, buffer=packed[1:].data)
    misaligned[...] = base
    for x in (read_only, base[:, ::2], np.asfortranarray(base), base.T, misaligned):
        before = x.copy()
        with pytest.raises(ValueError, match="inplace=True needs x writeable, C-contiguous and aligned"):
            case.forward(x, inplace=True)
        np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("case", [Act("leaky_relu", dict(negative_slope=-0.3)), Act("elu", dict(alpha=-0.5))],
                         ids=lambda case: case.id)
def test_inplace_numpy_true_is_refused_like_true(case):
    x = np.array([-1.0, 2.0])
    with pytest.raises(ValueError, match="inplace=True needs a non-negative"):
        case.forward(x, inplace=np.True_)


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("dtype", [np.int64, np.float16, object, np.complex128, bool, ">f8", ">f4"])
def test_rejects_other_dtypes(dtype):
    x = np.ones(3, dtype=dtype)
    good = np.ones(3)
    for case in PLAIN:
        with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
            case.forward(x)
    with pytest.raises(TypeError, match="grad_out must have dtype float32 or float64"):
        F.activation_backward("relu", x, good)
    with pytest.raises(TypeError, match="saved must have dtype float32 or float64"):
        F.activation_backward("gelu", good, x)


BAD_OPTIONS = [
    ("leaky_relu", dict(negative_slope=np.inf), ValueError, "negative_slope must be finite"),
    ("leaky_relu", dict(negative_slope=np.nan), ValueError, "negative_slope must be finite"),
    ("leaky_relu", dict(negative_slope=True), TypeError, "negative_slope must be a real number"),
    ("leaky_relu", dict(negative_slope="0.1"), TypeError, "negative_slope must be a real number"),
    ("leaky_relu", dict(negative_slope=None), TypeError, "negative_slope must be a real number"),
    ("elu", dict(alpha=-np.inf), ValueError, "alpha must be finite"),
    ("elu", dict(alpha=np.bool_(True)), TypeError, "alpha must be a real number"),
    ("elu", dict(alpha="1"), TypeError, "alpha must be a real number"),
    ("gelu", dict(approximate="foo"), ValueError, "approximate must be 'none' or 'tanh'"),
    ("gelu", dict(approximate=None), ValueError, "approximate must be 'none' or 'tanh'"),
    ("gelu", dict(approximate=True), ValueError, "approximate must be 'none' or 'tanh'"),
    ("softplus", dict(beta=0), ValueError, "beta must be non-zero"),
    ("softplus", dict(beta=0.0), ValueError, "beta must be non-zero"),
    ("softplus", dict(beta=np.nan), ValueError, "beta must be finite"),
    ("softplus", dict(beta=False), TypeError, "beta must be a real number"),
    ("softplus", dict(threshold=np.inf), ValueError, "threshold must be finite"),
    ("softplus", dict(threshold="20"), TypeError, "threshold must be a real number"),
]


@pytest.mark.parametrize("name, options, error, match", BAD_OPTIONS,
                         ids=[f"{name}-{options!r}" for name, options, _, _ in BAD_OPTIONS])
def test_forward_rejects_bad_options(name, options, error, match):
    with pytest.raises(error, match=match):
        getattr(F, name)(np.ones(3), **options)


def _backward_option_params():
    params = []
    for name, options, error, match in BAD_OPTIONS:
        marks = []
        params.append(pytest.param(name, options, error, match, marks=marks, id=f"{name}-{options!r}"))
    return params


@pytest.mark.parametrize("name, options, error, match", _backward_option_params())
def test_backward_rejects_bad_options(name, options, error, match):
    with pytest.raises(error, match=match):
        F.activation_backward(name, np.ones(3), np.ones(3), saved_is="input", **options)


@pytest.mark.parametrize("inplace", [1, 0, "yes", None, np.float64(1.0)])
def test_inplace_must_be_a_bool(inplace):
    for case in (case for case in PLAIN if case.has_inplace):
        with pytest.raises(TypeError, match="inplace must be a bool"):
            case.forward(np.ones(3), inplace=inplace)


def test_activation_backward_rejects_bad_calls():
    g, x = np.ones((2, 3)), np.ones((2, 3))
    with pytest.raises(ValueError, match="name must be one of .* got 'swish'"):
        F.activation_backward("swish", g, x)
    with pytest.raises(ValueError, match="name must be one of .* got 'gelu_tanh'"):
        F.activation_backward("gelu_tanh", g, x)
    with pytest.raises(ValueError, match="name must be one of .* got None"):
        F.activation_backward(None, g, x)
    with pytest.raises(ValueError, match="saved_is must be 'input' or 'output', got 'x'"):
        F.activation_backward("relu", g, x, saved_is="x")
    with pytest.raises(ValueError, match="saved_is must be 'input' or 'output', got 1"):
        F.activation_backward("relu", g, x, saved_is=1)
    with pytest.raises(TypeError, match="activation_backward\\('relu'\\).*unexpected keyword argument 'alpha'"):
        F.activation_backward("relu", g, x, alpha=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'inplace'"):
        F.activation_backward("elu", g, x, inplace=True)
    with pytest.raises(ValueError, match="grad_out and saved must have one shape and dtype"):
        F.activation_backward("relu", np.ones((3, 2)), x)
    with pytest.raises(ValueError, match="grad_out and saved must have one shape and dtype"):
        F.activation_backward("relu", np.ones(6), x)
    with pytest.raises(ValueError, match="grad_out and saved must have one shape and dtype"):
        F.activation_backward("relu", g.astype(np.float32), x)
    with pytest.raises(TypeError, match="saved must be a numpy.ndarray"):
        F.activation_backward("relu", g, None)
    with pytest.raises(TypeError, match="grad_out must be a numpy.ndarray"):
        F.activation_backward("relu", 1.0, x)


@pytest.mark.parametrize("name", ["silu", "gelu", "hardswish", "hardsigmoid", "softplus"])
def test_backward_from_the_output_refused_where_it_needs_the_input(name):
    with pytest.raises(ValueError, match=f"{name}'s gradient needs the forward's input"):
        F.activation_backward(name, np.ones(3), np.ones(3), saved_is="output")


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_backward_from_the_input_refused_where_it_needs_the_output(name):
    with pytest.raises(ValueError, match=f"{name}'s gradient is computed from its output"):
        F.activation_backward(name, np.ones(3), np.ones(3), saved_is="input")


def test_backward_from_the_output_needs_a_non_negative_slope_or_alpha():
    with pytest.raises(ValueError, match="leaky_relu's gradient from its output needs a non-negative slope, got -0.1"):
        F.activation_backward("leaky_relu", np.ones(3), np.ones(3), saved_is="output", negative_slope=-0.1)
    with pytest.raises(ValueError, match="elu's gradient from its output needs a non-negative alpha, got -2.0"):
        F.activation_backward("elu", np.ones(3), np.ones(3), saved_is="output", alpha=-2.0)


# ------------------------------------------------------------------------------ nn layers
@dataclass(frozen=True)
class Layer:
    """A convx.nn activation layer and its torch.nn twin (same class name, same options)."""

    cls: str
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.cls + "".join(f",{key}={value}" for key, value in self.options.items())

    @property
    def inplace_allowed(self) -> bool:
        return self.cls in ("ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "SiLU", "Hardswish", "Hardsigmoid") and (
            self.options.get("negative_slope", 0) >= 0 and self.options.get("alpha", 0) >= 0
        )

    def make(self, dtype=np.float64, inplace=False):
        options = dict(self.options, inplace=True) if inplace else dict(self.options)
        if self.cls == "PReLU":
            layer = nn.PReLU(**options, dtype=dtype)
            layer.params["weight"][:] = np.linspace(-0.3, 0.4, layer.num_parameters)
            return layer
        return getattr(nn, self.cls)(**options)

    def kinks(self) -> list[float]:
        points = {"ReLU6": [0.0, 6.0], "Hardswish": [-3.0, 3.0], "Hardsigmoid": [-3.0, 3.0]}.get(self.cls, [0.0])
        if self.cls == "Softplus":
            points = [self.options.get("threshold", 20.0) / self.options.get("beta", 1.0)]
        return points


LAYERS = [
    Layer("ReLU"),
    Layer("ReLU6"),
    Layer("LeakyReLU"),
    Layer("LeakyReLU", dict(negative_slope=0.2)),
    Layer("LeakyReLU", dict(negative_slope=-0.3)),
    Layer("PReLU"),
    Layer("PReLU", dict(num_parameters=3)),
    Layer("ELU"),
    Layer("ELU", dict(alpha=0.7)),
    Layer("ELU", dict(alpha=-0.5)),
    Layer("SELU"),
    Layer("Sigmoid"),
    Layer("Tanh"),
    Layer("SiLU"),
    Layer("GELU"),
    Layer("GELU", dict(approximate="tanh")),
    Layer("Hardswish"),
    Layer("Hardsigmoid"),
    Layer("Softplus"),
    Layer("Softplus", dict(beta=2.0, threshold=3.0)),
]
LAYER_PARAMS = [pytest.param(layer, False, id=layer.id) for layer in LAYERS] + [
    pytest.param(layer, True, id=f"{layer.id},inplace") for layer in LAYERS if layer.inplace_allowed
]


@pytest.mark.parametrize("layer, inplace", LAYER_PARAMS)
def test_layer_gradcheck(layer, inplace, rng):
    x = away_from(2.5 * rng.standard_normal((2, 3, 3, 2)), layer.kinks())
    ours = layer.make(np.float64, inplace)
    if not inplace:
        assert convx.gradcheck(ours, x)
    else:
        # gradcheck calls forward on one array many times; an in-place forward overwrites it.
        assert convx.gradcheck(lambda v: ours.forward(v.copy()), x, backward=ours.backward)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layer, inplace", LAYER_PARAMS)
def test_layer_matches_torch(layer, inplace, dtype, torch, rng):
    ours = layer.make(dtype, inplace)
    theirs = getattr(torch.nn, layer.cls)(**(dict(layer.options, inplace=True) if inplace else layer.options))
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    x = (4 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    x_before = x.copy()
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    grad_before = grad_out.copy()
    leaf = torch.from_numpy(x.copy()).requires_grad_(True)
    y_torch = theirs(leaf.clone() if inplace else leaf)
    y_torch.backward(torch.from_numpy(grad_out.copy()))
    y = ours(x)
    if inplace:
        assert y is x  # overwritten and returned
    else:
        np.testing.assert_array_equal(x, x_before)
    assert_matches_torch(y, y_torch.detach().numpy(), dtype, what="output")
    grad_x = ours.backward(grad_out)
    np.testing.assert_array_equal(grad_out, grad_before)
    rtol = 1e-7 if layer.cls == "Hardsigmoid" and dtype == np.float64 else None  # see _torch_rtol
    assert_matches_torch(grad_x, leaf.grad.numpy(), dtype, what="grad_x", rtol=rtol)
    for name, param in theirs.named_parameters():
        assert_close(ours.grads[name], param.grad.numpy(), dtype)


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if layer.inplace_allowed], ids=lambda layer: layer.id)
def test_inplace_layer_refuses_what_it_cannot_overwrite(layer, rng):
    base = rng.standard_normal((2, 3, 4))
    read_only = base.copy()
    read_only.setflags(write=False)
    for x in (read_only, base[:, :, ::2], base.transpose(2, 1, 0)):
        before = x.copy()
        with pytest.raises(ValueError, match="inplace=True needs x writeable, C-contiguous"):
            layer.make(inplace=True)(x)
        np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("cls, options", [("LeakyReLU", dict(negative_slope=-0.1)), ("ELU", dict(alpha=-1.0))])
def test_inplace_layer_with_a_negative_slope_is_refused(cls, options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=f"inplace=True needs a non-negative {name}"):
        getattr(nn, cls)(**options, inplace=True)


LAYER_BAD_OPTIONS = [
    ("LeakyReLU", dict(negative_slope="0.1"), TypeError, "negative_slope must be a real number"),
    ("LeakyReLU", dict(negative_slope=True), TypeError, "negative_slope must be a real number"),
    ("LeakyReLU", dict(negative_slope=np.nan), ValueError, "negative_slope must be finite"),
    ("ELU", dict(alpha=None), TypeError, "alpha must be a real number"),
    ("ELU", dict(alpha=np.inf), ValueError, "alpha must be finite"),
    ("GELU", dict(approximate="foo"), ValueError, "approximate must be 'none' or 'tanh'"),
    ("GELU", dict(approximate=None), ValueError, "approximate must be 'none' or 'tanh'"),
    ("Softplus", dict(beta=0.0), ValueError, "beta must be non-zero"),
    ("Softplus", dict(beta=False), TypeError, "beta must be a real number"),
    ("Softplus", dict(beta=-np.inf), ValueError, "beta must be finite"),
    ("Softplus", dict(threshold="20"), TypeError, "threshold must be a real number"),
    ("Softplus", dict(threshold=np.nan), ValueError, "threshold must be finite"),
    ("ReLU", dict(inplace=1), TypeError, "inplace must be a bool"),
    ("SiLU", dict(inplace="yes"), TypeError, "inplace must be a bool"),
    ("PReLU", dict(init="0.25"), TypeError, "init must be a real number"),
    ("PReLU", dict(num_parameters=0), ValueError, "num_parameters must be positive"),
]


@pytest.mark.parametrize("cls, options, error, match", LAYER_BAD_OPTIONS,
                         ids=[f"{cls}-{options!r}" for cls, options, _, _ in LAYER_BAD_OPTIONS])
def test_layer_rejects_bad_options(cls, options, error, match):
    """At construction or, for values only the functional checks (finiteness), at the first forward."""
    with pytest.raises(error, match=match):
        getattr(nn, cls)(**options)(np.ones((2, 3)))


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.id)
def test_layer_rejects_bad_input(layer):
    ours = layer.make(np.float64)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64|x must be a numpy.ndarray"):
        ours(np.ones((2, 3), dtype=np.int32))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        ours(np.ones((2, 3), dtype=np.float16))
    y = ours(np.ones((2, 3)))
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        ours.backward(np.ones((3, 2)))
    with pytest.raises(TypeError, match="grad_out must have the forward output's dtype"):
        ours.backward(np.ones((2, 3), dtype=np.float32))
    assert ours.backward(np.ones_like(y)).shape == (2, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "gelu", "silu"])
def test_add_is_the_sum_then_the_activation(activation, dtype, rng):
    """convx.functional.add (a residual connection's sum and activation in one pass), bit for bit
    the two separate steps, on sizes that split between threads and blocks."""
    a = rng.standard_normal((3, 70001)).astype(dtype)
    b = rng.standard_normal((3, 70001)).astype(dtype)[:, ::-1]  # not contiguous
    a_before, b_before = a.copy(), b.copy()
    got = F.add(a, b, activation=activation)
    expected = a + b if activation is None else getattr(F, activation)(a + b)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == dtype
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


def test_add_refuses_mismatched_arrays():
    with pytest.raises(ValueError, match="one shape and dtype"):
        F.add(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="one shape and dtype"):
        F.add(np.ones(3), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="activation_params"):
        F.add(np.ones(3), np.ones(3), activation_params={"negative_slope": 0.1})
    with pytest.raises(TypeError, match="float32 or float64"):
        F.add(np.ones(3, np.int64), np.ones(3, np.int64))
