"""Envoy access logs (Istio's default text format and JSON): the 503 UF lines and their addresses."""

from __future__ import annotations

import json
import re
from datetime import datetime

from meshnet.lite.records import dataclass

# Istio's default TEXT format: [%START_TIME%] "%REQ(:METHOD)% %PATH% %PROTOCOL%" %RESPONSE_CODE%
# %RESPONSE_FLAGS% ... "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS%
# %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%
_TEXT = re.compile(
    r'^\[(?P<start>[^\]]+)\] "(?P<req>[^"]*)" (?P<code>\d{1,3}) (?P<flags>\S+) \S+ \S+ "[^"]*" '
    r'(?P<rx>\d+) (?P<tx>\d+) (?P<dur>\d+|-) \S+ "[^"]*" "[^"]*" "[^"]*" "[^"]*" "(?P<uhost>[^"]*)" '
    r'(?P<ucluster>\S+) (?P<ulocal>\S+) (?P<dlocal>\S+) (?P<dremote>\S+)')
# Older or customised text formats: at least the time, request, code and flags.
_LOOSE = re.compile(r'^\[(?P<start>[^\]]+)\] "(?P<req>[^"]*)" (?P<code>\d{1,3}) (?P<flags>\S+)')
_ADDR = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):(\d{1,5})\b")


class EnvoyLogError(ValueError):
    """Nothing in the file looks like an Envoy access log."""


@dataclass
class AccessLine:
    lineno: int
    text: str
    start: datetime | None
    code: int
    flags: tuple[str, ...]
    duration_ms: int | None
    upstream_host: str | None = None
    upstream_local: str | None = None
    downstream_local: str | None = None
    downstream_remote: str | None = None

    @property
    def is_503_uf(self) -> bool:
        return self.code == 503 and "UF" in self.flags

    def addresses(self) -> list[tuple[str, int]]:
        """Every ip:port in the line (works for any format), named fields first."""
        out = []
        for v in (self.upstream_local, self.downstream_remote, self.upstream_host, self.downstream_local):
            a = split_addr(v)
            if a and a not in out:
                out.append(a)
        for m in _ADDR.finditer(self.text):
            a = (m.group(1).strip("[]"), int(m.group(2)))
            if a not in out:
                out.append(a)
        return out


def split_addr(v: str | None) -> tuple[str, int] | None:
    if not v or v == "-" or ":" not in v:
        return None
    host, _, port = v.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


def _time(v: str | None) -> datetime | None:
    if not v or v == "-":
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_line(lineno: int, line: str) -> AccessLine | None:
    s = line.strip()
    if not s:
        return None
    if s.startswith("{"):
        try:
            d = json.loads(s)
        except ValueError:
            return None
        if "response_code" not in d:
            return None
        try:
            code = int(d.get("response_code") or 0)
        except (TypeError, ValueError):
            return None
        flags = str(d.get("response_flags") or "-")
        dur = d.get("duration")
        return AccessLine(lineno, s, _time(d.get("start_time")), code, tuple(flags.split(",")),
                          int(dur) if isinstance(dur, int | float) else None,
                          d.get("upstream_host"), d.get("upstream_local_address"),
                          d.get("downstream_local_address"), d.get("downstream_remote_address"))
    m = _TEXT.match(s)
    if m:
        return AccessLine(lineno, s, _time(m["start"]), int(m["code"]), tuple(m["flags"].split(",")),
                          int(m["dur"]) if m["dur"].isdigit() else None, m["uhost"], m["ulocal"],
                          m["dlocal"], m["dremote"])
    m = _LOOSE.match(s)
    if m:
        return AccessLine(lineno, s, _time(m["start"]), int(m["code"]), tuple(m["flags"].split(",")), None)
    return None


def read_log(path: str) -> list[AccessLine]:
    """All parsable access-log lines; raises EnvoyLogError if the file has none."""
    out = []
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            a = parse_line(i, line)
            if a is not None:
                out.append(a)
    if total and not out:
        raise EnvoyLogError(f"{path}: no Envoy access-log lines found (Istio text or JSON format expected)")
    return out
