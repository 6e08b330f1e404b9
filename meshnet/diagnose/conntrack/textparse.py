"""Offline readers: `conntrack -L` (plain and `-o extended`), /proc/net/nf_conntrack, `conntrack -S`
and /proc/net/stat/nf_conntrack, so a support bundle from a customer's node can be analysed anywhere."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from meshnet.lite.records import dataclass, field

from .entry import PROTO_NUMS, CtEntry

_FLAGS = {"[UNREPLIED]", "[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]"}
_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code"}
_STAT_KEYS = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
              "search_restart", "clash_resolve", "chain_toolong")
# Column order of /proc/net/stat/nf_conntrack (hex values, one row per CPU).
_PROC_STAT_COLS = ("entries", "clashres", "found", "new", "invalid", "ignore", "delete", "delete_list",
                   "insert", "insert_failed", "drop", "early_drop", "icmp_error", "expect_new",
                   "expect_create", "expect_delete", "search_restart")


class ParseError(ValueError):
    """The input is not in a conntrack format we know; carries the line number."""


@dataclass
class OfflineData:
    """What a file gave: entries, per-CPU stats, and the lines we did not understand."""

    entries: list[CtEntry] = field(default_factory=list)
    stats_cpu: list[dict[str, int]] = field(default_factory=list)
    count: int | None = None
    skipped: int = 0
    fmt: str = ""


def parse_entry_line(line: str) -> CtEntry | None:
    """One line of `conntrack -L [-o extended]` or /proc/net/nf_conntrack; None if it is not one."""
    tok = line.split()
    if not tok:
        return None
    i = 0
    family = 4
    if tok[0] in ("ipv4", "ipv6"):
        family = 4 if tok[0] == "ipv4" else 6
        i = 2
    while i < len(tok) and tok[i].startswith("[") and tok[i] not in _FLAGS:
        i += 1  # `-o timestamp` style prefixes
    if i + 1 >= len(tok) or not tok[i + 1].isdigit():
        return None
    name, proto = tok[i], int(tok[i + 1])
    if PROTO_NUMS.get(name, proto) != proto and not name.startswith("unknown"):
        return None
    i += 2
    timeout = None
    if i < len(tok) and tok[i].isdigit():
        timeout = int(tok[i])
        i += 1
    state = ""
    if i < len(tok) and "=" not in tok[i] and not tok[i].startswith("["):
        state = tok[i]
        i += 1
    tuples: list[dict[str, str]] = [{}]
    unreplied = assured = False
    extra: dict[str, str] = {}
    for t in tok[i:]:
        if t == "[UNREPLIED]":
            unreplied = True
        elif t == "[ASSURED]":
            assured = True
        elif t.startswith("["):
            continue
        elif "=" in t:
            k, v = t.split("=", 1)
            if k == "src" and "src" in tuples[-1]:
                tuples.append({})  # the reply tuple starts at the second src=
            cur = tuples[-1]
            if len(tuples) <= 2 and (k in _TUPLE_KEYS or (k == "id" and "type" in cur and "id" not in cur)):
                cur[k] = v  # ICMP's id= belongs to the tuple; a trailing id= is the entry id
            else:
                extra[k] = v
    if len(tuples) != 2 or "src" not in tuples[0] or "src" not in tuples[1]:
        return None
    o, r = tuples
    if ":" in o["src"]:
        family = 6
    try:
        e = CtEntry(family=family, proto=proto, src=o["src"], dst=o["dst"],
                    sport=int(o.get("sport", 0)), dport=int(o.get("dport", 0)), rsrc=r["src"], rdst=r["dst"],
                    rsport=int(r.get("sport", 0)), rdport=int(r.get("dport", 0)), state=state,
                    unreplied=unreplied, assured=assured, timeout=timeout)
        e.mark = int(extra.pop("mark", "0"), 0)
        e.zone = int(extra.pop("zone", "0"))
        if "id" in extra:
            e.id = int(extra.pop("id"))
    except (KeyError, ValueError):
        return None
    e.extra = extra or None
    return e


def parse_stats_line(line: str) -> dict[str, int] | None:
    """`cpu=0 found=0 invalid=3 ...` from `conntrack -S`."""
    if not line.lstrip().startswith("cpu="):
        return None
    row: dict[str, int] = {}
    for t in line.split():
        k, _, v = t.partition("=")
        if v.isdigit():
            row[k] = int(v)
    for k in _STAT_KEYS:
        row.setdefault(k, 0)
    return row


def parse_proc_stat(text: str) -> list[dict[str, int]]:
    """/proc/net/stat/nf_conntrack: a header row of names, then one hex row per CPU."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    names = lines[0] if not all(_is_hex(x) for x in lines[0]) else list(_PROC_STAT_COLS)
    rows = []
    for cpu, vals in enumerate(x for x in lines if x is not names):
        row = {"cpu": cpu}
        for k, v in zip(names, vals, strict=False):
            row["clash_resolve" if k == "clashres" else k] = int(v, 16)
        rows.append(row)
    return rows


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True


def parse_lines(lines: Iterable[str]) -> OfflineData:
    """A whole file: entry lines, `conntrack -S` lines, `conntrack -C`; other lines are counted."""
    out = OfflineData()
    fmts = set()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("conntrack v"):  # conntrack-tools' summary line
            continue
        e = parse_entry_line(line)
        if e is not None:
            out.entries.append(e)
            fmts.add("extended" if line.split()[0] in ("ipv4", "ipv6") else "conntrack-L")
            continue
        st = parse_stats_line(line)
        if st is not None:
            out.stats_cpu.append(st)
            continue
        if line.isdigit() and out.count is None:
            out.count = int(line)
            continue
        out.skipped += 1
    out.fmt = "+".join(sorted(fmts))
    return out


def iter_file(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from f


def read_file(path: str) -> OfflineData:
    """Parse a saved file; raises ParseError if nothing in it looks like conntrack output."""
    data = parse_lines(iter_file(path))
    if not data.entries and not data.stats_cpu and data.skipped:
        raise ParseError(f"{path}: no conntrack entries found ({data.skipped} lines in an unknown format)")
    return data
