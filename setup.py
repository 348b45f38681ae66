"""Build the convx Cython extension, with OpenMP when the compiler supports it.

Environment switches
--------------------
CONVX_DEBUG_CYTHON=1
    Turn Cython's bounds, wraparound and initialisation checks back on (slow; for debugging).
CONVX_DISABLE_OPENMP=1
    Build without OpenMP even where the compiler has it.
CONVX_MARCH_NATIVE=1
    Add ``-march=native`` (the binary then only runs on CPUs like the build machine's).
CONVX_SANITIZE=1
    Build with AddressSanitizer and UndefinedBehaviorSanitizer (GCC or Clang; any undefined
    behaviour aborts). Python itself is not instrumented, so the ASan runtime must be loaded
    first: see ``.ci/sanitize.sh``.
"""

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def _flag_set(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or None when the compiler lacks it."""
    if _flag_set("CONVX_DISABLE_OPENMP"):
        return None
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST)
        for compile_args, link_args in candidates:
            cmd = [compiler, *compile_args, source, "-o", os.path.join(tmp, "probe"), *link_args]
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                continue
            if done.returncode == 0:
                return compile_args, link_args
    return None


def build_extensions():
    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "embedsignature": True,
    }
    if _flag_set("CONVX_DEBUG_CYTHON"):
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)

    compile_args = ["-O3", "-fopenmp-simd"] if sys.platform != "win32" else ["/O2"]
    link_args = []
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]
    if _flag_set("CONVX_MARCH_NATIVE"):
        compile_args.append("-march=native")
    if _flag_set("CONVX_SANITIZE"):
        sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        compile_args += [*sanitizers, "-fno-omit-frame-pointer", "-g", "-O1"]
        link_args += sanitizers

    omp = openmp_flags()
    if omp is None:
        banner = "*" * 72
        print(
            f"\n{banner}\nconvx: OpenMP is NOT available with this compiler (or was disabled);\n"
            f"building a SERIAL extension. Every op still works, on one thread.\n{banner}\n",
            file=sys.stderr,
        )
        macros.append(("CONVX_OPENMP", 0))
    else:
        compile_args += omp[0]
        link_args += omp[1]
        macros.append(("CONVX_OPENMP", 1))

    ext = Extension(
        "convx._core",
        sources=["src/convx/_core.pyx"],
        include_dirs=[numpy.get_include(), "src/convx"],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return cythonize([ext], compiler_directives=directives)


setup(ext_modules=build_extensions())
