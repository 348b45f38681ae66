"""The examples in the public docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "convx._config",
    "convx._threads",
    "convx.functional.activations",
    "convx.functional.conv",
    "convx.functional.conv1d",
    "convx.functional.normalization",
    "convx.functional.padding",
    "convx.functional.pooling",
    "convx.functional.pooling1d",
    "convx.functional.pooling3d",
    "convx.reference.conv3d",
    "convx.reference.pooling3d",
    "convx.functional.resample",
    "convx.functional.softmax",
    "convx.functional.unpooling",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
