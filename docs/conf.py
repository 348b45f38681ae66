"""Sphinx configuration for convx's documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` against an installed convx
(``pip install ".[docs]"``) or an in-place build (``PYTHONPATH=src``). The figures are drawn
at build time by the scripts in ``figures/`` (matplotlib's plot directive); the ``>>>``
examples in the pages run in the test suite (``tests/test_docs.py``).
"""

import convx

project = "convx"
author = "The convx developers"
copyright = "2026, The convx developers"
release = convx.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "matplotlib.sphinxext.plot_directive",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []

# API reference from the numpydoc docstrings; the docstrings give every type and shape, so
# the (long, TypeVar-laden) annotations stay out of the signatures.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# Figures: scripts under docs/figures, run at build time, PNG only.
plot_basedir = "."
plot_formats = [("png", 110)]
plot_html_show_formats = False
plot_html_show_source_link = False
plot_include_source = False
plot_rcparams = {"figure.dpi": 110, "font.size": 9}

html_theme = "alabaster"
html_theme_options = {"description": "Fast 2-D convolution and pooling for NumPy neural networks", "fixed_sidebar": True}
html_static_path: list[str] = []
