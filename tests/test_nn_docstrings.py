"""The examples in the convx.nn, convx.optim and convx.gradcheck docstrings run as shown."""

import doctest
import importlib

import pytest

MODULES = [
    "convx._gradcheck",
    "convx.optim",
    "convx.nn.activations",
    "convx.nn.blocks",
    "convx.nn.containers",
    "convx.nn.conv",
    "convx.nn.dropout",
    "convx.nn.init",
    "convx.nn.linear",
    "convx.nn.losses",
    "convx.nn.module",
    "convx.nn.normalization",
    "convx.nn.padding",
    "convx.nn.pooling",
    "convx.nn.pooling3d",
    "convx.nn.utils",
    "convx.optim.lr_scheduler",
    "convx.nn.resample",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
