"""convx.show_config(): version, build flags, OpenMP status, threads and BLAS, as recorded at build time."""

import sys

import convx
from convx import _config, _core


def test_config_reports_runtime_and_build():
    config = _config.config()
    assert config["convx"] == convx.__version__
    assert config["openmp"] is _core.openmp_enabled()
    assert config["threads"] == convx.get_num_threads()
    assert isinstance(config["blas"], list)
    assert config["fork_capped"] is False  # not a forked child (tests/test_fork.py has those)
    if sys.platform.startswith("linux"):  # found with dladdr (elsewhere it may be unknown: None)
        assert (config["openmp_runtime"] is not None) == _core.openmp_enabled()
    # setup.py writes convx/_build_info.py beside the extension it builds
    build = _config.build_info()
    assert build, "convx/_build_info.py missing: the extension was not built by convx's setup.py"
    assert build["openmp"] is _core.openmp_enabled()
    for key in ("compiler", "extra_compile_args", "define_macros", "cython", "cython_directives", "numpy"):
        assert f"build.{key}" in config
    assert f"CONVX_OPENMP={int(_core.openmp_enabled())}" in build["define_macros"]


def test_show_config_prints_every_entry(capsys):
    convx.show_config()
    lines = capsys.readouterr().out.splitlines()
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys[:1] == ["convx"]
    for key in ("openmp", "threads", "blas", "build.openmp", "build.extra_compile_args", "build.compiler"):
        assert key in keys
