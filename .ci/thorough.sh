#!/usr/bin/env bash
# Thorough stage: thousands of Hypothesis examples per property (fresh random ones each run;
# failures are kept in .hypothesis/ and replayed first), then the tests marked slow: offsets
# beyond 2**31 elements on zero-page mappings, 10,000-call tracemalloc windows.
#
# Usage: bash .ci/thorough.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0

echo "== thorough: property-based tests, profile 'thorough'"
CONVX_HYPOTHESIS_PROFILE=thorough python -m pytest -p no:cacheprovider tests/test_fuzz_conv.py \
    tests/test_fuzz_pooling.py "$@"
echo "== thorough: slow tests ($(( SECONDS ))s so far)"
python -m pytest -p no:cacheprovider --run-slow -m slow "$@"
echo "== thorough: done in ${SECONDS}s"
