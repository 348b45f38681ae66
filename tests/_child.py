"""A test script in a child process, sent Ctrl-C (SIGINT) each time it says it has started a call.

The script prints one line per event, words separated by spaces: ``start ...`` just before a
long call (the child is then sent SIGINT after ``delay`` seconds), anything else as it likes, and
``usable`` once it has checked that the interrupted process still works, which ends the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def interrupt_child(script: str, delay: float, timeout: float = 120, **environment: str) -> list[tuple[list[str], float]]:
    """Run ``script`` in a child (``environment`` added to this process's), interrupting each
    ``start``; return every line before ``usable`` as (its words, the time the SIGINT it caused
    was sent, or 0.0 for lines that caused none). The child must exit with status 0."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **environment)
    lines = []
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as child:
        try:
            for line in child.stdout:
                words = line.split()
                if words[0] == "usable":
                    break
                sent = 0.0
                if words[0] == "start":
                    time.sleep(delay)
                    sent = time.time()
                    child.send_signal(signal.SIGINT)
                lines.append((words, sent))
            stderr = child.stderr.read()
            assert child.wait(timeout=timeout) == 0, stderr
        finally:
            child.kill()
    return lines
