"""A minimal line logger for the plugin.

The `logging` package is not used: a plugin run writes a handful of lines, and the runtime
owns stdout (the result) and often discards stderr, so lines go to the configured file only.
Logging must never fail a pod start: write errors are swallowed.
"""

from __future__ import annotations

import os
import time

from meshnet.lite import jsonlite as json  # the C accelerator only: `import json` costs ~8 ms per pod

_RANK = {"debug": 10, "info": 20, "warn": 30, "error": 40, "none": 100}


class Log:
    def __init__(self, path: str = "", level: str = "info", context: str = "") -> None:
        self.path = path
        self.threshold = _RANK.get(level, 20)
        self.context = context

    def _write(self, level: str, msg: str, **fields: object) -> None:
        if not self.path or _RANK[level] < self.threshold:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": level, "pid": os.getpid(),
                  "ctx": self.context, "msg": msg, **fields}
        try:
            # One O_APPEND write per line: concurrent plugin runs do not interleave lines.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, (json.dumps(record, default=str) + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    def debug(self, msg: str, **fields: object) -> None:
        self._write("debug", msg, **fields)

    def info(self, msg: str, **fields: object) -> None:
        self._write("info", msg, **fields)

    def warn(self, msg: str, **fields: object) -> None:
        self._write("warn", msg, **fields)

    def error(self, msg: str, **fields: object) -> None:
        self._write("error", msg, **fields)
