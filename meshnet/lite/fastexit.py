"""Leave a one-shot process without interpreter teardown.

A pod-start process (istio-init, the CNI plugin) is done once its answer is written: finalising
every module and running a last GC only delays the pod, by a few ms each time.
"""

from __future__ import annotations

import os
import sys


def exit_now(code: int) -> None:
    """Flush stdout/stderr, then `os._exit`: no atexit handlers, no module finalisation."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said anyway
    os._exit(code)
