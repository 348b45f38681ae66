"""pytest-benchmark suites over the shape suite of ``python -m convx.bench``.

    pytest bench/ --benchmark-only                     # every case, op and implementation
    pytest bench/ --benchmark-only -k "convx or torch"  # skip the slow pure-NumPy reference
    CONVX_BENCH_QUICK=1 pytest bench/ ...              # batch 2: a fast check

Results group by case and op, so ``--benchmark-compare`` lines up runs of the same layer.
"""

import os

import numpy as np
import pytest

from convx.bench.cases import CASES, quick
from convx.bench.implementations import IMPLEMENTATIONS

QUICK = os.environ.get("CONVX_BENCH_QUICK", "") not in ("", "0")

PARAMS = [
    pytest.param(name, op, id=f"{name}-{op}")
    for name, case in CASES.items()
    for op in case.ops
]


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("case_name, op", PARAMS)
def test_op(benchmark, case_name, op, implementation):
    case = CASES[case_name]
    if QUICK:
        case = quick(case)
    calls = IMPLEMENTATIONS[implementation](case, case.arrays(np.random.default_rng(0)))
    if calls is None:
        pytest.skip(f"{implementation} is not installed")
    benchmark.group = f"{case_name} {op}"
    benchmark.extra_info["flops"] = case.flops(op)
    benchmark(calls[op])
