"""``python -m convx.bench``: see :mod:`convx.bench.cli`."""

import sys

from .cli import main

sys.exit(main(reuse_memory=True))
