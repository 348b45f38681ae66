"""The ``>>>`` examples in the documentation pages run and print what they show.

The pages live in ``docs/`` beside ``tests/`` (in a checkout and in the sdist); the tutorial on
NumPy CNNs imports the classroom layers from ``examples/``.
"""

import doctest
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.rst"))
PAGES = [page for page in PAGES if "_build" not in page.parts]


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


def test_pages_found():
    assert len(PAGES) >= 5, f"documentation pages not found under {ROOT / 'docs'}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT / "docs")) for p in PAGES])
def test_page_examples(page, examples_on_path):
    import convx

    previous_threads = convx.get_num_threads()
    try:
        result = doctest.testfile(
            str(page), module_relative=False, encoding="utf-8", verbose=False, report=True,
            optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
        )
    finally:
        convx.set_num_threads(previous_threads)
        for name in [m for m in sys.modules if m in {"classroom_layers", "convx_layers"}]:
            del sys.modules[name]
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page.name}"


def test_installation_page_lists_the_extras_of_pyproject():
    """Every optional-dependency group of pyproject.toml is described on the installation page,
    and the page describes no other; the distribution name is the one the page tells users."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    page = (ROOT / "docs" / "installation.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^``([a-z]+)``\n    ", page, re.M))
    assert listed == set(project["optional-dependencies"])
    assert project["name"] == "convx-nn"
    for text in (page, (ROOT / "README.md").read_text(encoding="utf-8")):
        assert not re.search(r"pip install\s+\"?convx(\[|\s|\"|$)", text), "an install instruction with the old name"
