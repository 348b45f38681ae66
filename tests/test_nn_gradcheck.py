"""convx.gradcheck: it accepts correct gradients, names wrong ones, and leaves everything as it was."""

import re

import numpy as np
import pytest

import convx
from convx import nn


class ScaledLinear(nn.Linear):
    """A Linear layer whose backward is wrong by a chosen factor on one gradient."""

    def __init__(self, wrong, factor=1.01):
        super().__init__(3, 2, dtype=np.float64, rng=0)
        self.wrong, self.factor = wrong, factor

    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        if self.wrong == "input":
            return grad_x * self.factor
        self._grads[self.wrong] = self._grads[self.wrong] * self.factor
        return grad_x


def test_accepts_a_correct_layer_and_function(rng):
    assert convx.gradcheck(nn.Linear(3, 2, dtype=np.float64, rng=0), rng.standard_normal((4, 3)))
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 2))
    assert convx.gradcheck(lambda p, q: p @ q, [a, b], backward=lambda g: (g @ b.T, a.T @ g))


@pytest.mark.parametrize("wrong, name", [("input", "inputs[0]"), ("weight", "parameter 'weight'"), ("bias", "parameter 'bias'")])
def test_names_the_array_with_a_wrong_gradient(wrong, name, rng):
    layer = ScaledLinear(wrong)
    x = rng.standard_normal((4, 3))
    with pytest.raises(AssertionError, match=f"analytical gradient of {re.escape(name)}.*worst at index"):
        convx.gradcheck(layer, x)
    assert convx.gradcheck(layer, x, raise_exception=False) is False


def test_check_params_false_skips_parameter_gradients(rng):
    assert convx.gradcheck(ScaledLinear("weight"), rng.standard_normal((4, 3)), check_params=False)


def test_tolerance_is_relative_to_the_numerical_gradient(rng):
    x = rng.standard_normal((4, 3))
    assert convx.gradcheck(ScaledLinear("input", factor=1 + 1e-4), x)
    assert not convx.gradcheck(ScaledLinear("input", factor=1 + 1e-4), x, rtol=1e-6, raise_exception=False)


def test_inputs_and_parameters_are_left_unchanged(rng):
    layer = nn.Conv2d(2, 2, 3, dtype=np.float64, rng=0)
    weight = layer.params["weight"]
    weight_before = weight.copy()
    x = rng.standard_normal((1, 2, 4, 4))
    x_before = x.copy()
    convx.gradcheck(layer, x)
    assert layer.params["weight"] is weight
    np.testing.assert_array_equal(weight, weight_before)
    np.testing.assert_array_equal(x, x_before)


def test_checks_a_whole_network_with_non_contiguous_parameters(rng):
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64, rng=0), nn.Tanh(), nn.Linear(4, 2, dtype=np.float64, rng=1))
    # A transposed view: perturbing a reshaped copy instead of the array itself would go unseen.
    model[0].params["weight"] = np.asfortranarray(model[0].params["weight"])
    assert convx.gradcheck(model, rng.standard_normal((5, 3)))


def test_scalar_valued_function(rng):
    x = rng.standard_normal(5)
    assert convx.gradcheck(lambda v: float(np.sum(v**3)), x, backward=lambda g: g * 3 * x**2)


def test_rejects_float32_and_misuse(rng):
    with pytest.raises(TypeError, match="float64"):
        convx.gradcheck(nn.Linear(3, 2), rng.standard_normal((4, 3)).astype(np.float32))
    with pytest.raises(TypeError, match="parameter 'weight' has dtype float32"):
        convx.gradcheck(nn.Linear(3, 2), rng.standard_normal((4, 3)))
    with pytest.raises(TypeError, match="needs backward"):
        convx.gradcheck(np.sin, rng.standard_normal(3))
    with pytest.raises(TypeError, match="backward is taken from the layer"):
        convx.gradcheck(nn.ReLU(), rng.standard_normal(3), backward=lambda g: g)
    with pytest.raises(ValueError, match="2 gradients for 1 inputs"):
        convx.gradcheck(np.sin, rng.standard_normal(3), backward=lambda g: (g, g))
    with pytest.raises(ValueError, match="shape"):
        convx.gradcheck(np.sin, rng.standard_normal(3), backward=lambda g: g[:2])


@pytest.mark.parametrize(
    "name, value, error, message",
    [
        ("eps", 0.0, ValueError, "eps must be a finite positive number, got 0.0"),
        ("eps", -1e-6, ValueError, "eps must be a finite positive number"),
        ("eps", float("nan"), ValueError, "eps must be a finite positive number, got nan"),
        ("eps", float("inf"), ValueError, "eps must be a finite positive number"),
        ("atol", float("inf"), ValueError, "atol must be a finite non-negative number, got inf"),
        ("atol", float("nan"), ValueError, "atol must be a finite non-negative number"),
        ("atol", -1.0, ValueError, "atol must be a finite non-negative number"),
        ("rtol", float("nan"), ValueError, "rtol must be a finite non-negative number"),
        ("rtol", np.float64("inf"), ValueError, "rtol must be a finite non-negative number"),
        ("eps", "1e-6", TypeError, "eps must be a real number"),
        ("atol", True, TypeError, "atol must be a real number"),
        ("rtol", None, TypeError, "rtol must be a real number"),
    ],
)
def test_refuses_tolerances_that_would_pass_anything(name, value, error, message, rng):
    """eps=nan, atol=inf and a NaN tolerance let any gradient through; eps=0 divided by zero."""
    wrong = ScaledLinear("input", factor=2.0)
    with pytest.raises(error, match=re.escape(message)):
        convx.gradcheck(wrong, rng.standard_normal((4, 3)), **{name: value})


def test_tolerances_of_other_numeric_types_are_accepted(rng):
    x = rng.standard_normal((4, 3))
    assert convx.gradcheck(nn.Linear(3, 2, dtype=np.float64, rng=0), x, eps=np.float32(1e-6), atol=0, rtol=np.float64(1e-3))
    assert not convx.gradcheck(ScaledLinear("input", factor=2.0), x, atol=0, rtol=0, raise_exception=False)


def test_a_non_finite_numerical_derivative_fails(rng):
    """A function that is NaN around the point cannot confirm any gradient."""
    x = rng.standard_normal(3)
    with pytest.raises(AssertionError, match="numerical nan"):
        convx.gradcheck(lambda v: v * np.nan, x, backward=lambda g: g)
    assert not convx.gradcheck(lambda v: v * np.nan, x, backward=lambda g: g, raise_exception=False)
