"""A namespace's whole interception-relevant state as text, and the specs and foreign state the
applier tests build on (atomicity, idempotency, cleanup, ambient apply)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from meshnet.apply.applier import spec_for_netns
from meshnet.apply.backends.xtables import Xtables
from meshnet.apply.netns import Netns
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.spec import Spec

DEFAULT = "-p 15001 -z 15006 -u 1337 -m REDIRECT -i * -b * -d 15090,15021,15020"
TPROXY_DNS = DEFAULT.replace("REDIRECT", "TPROXY") + " --redirect-dns --capture-all-dns --drop-invalid -c eth9 -k eth8"
XT_BACKENDS = ("iptables-nft", "iptables-legacy", "iptc")


def make_spec(flags: str, ns: Netns, **env: str) -> Spec:
    spec, _ = parse_istio_args(flags.split(" "), env)
    return spec_for_netns(spec.with_changes(dual_stack=True), ns)


def _clean(text: str) -> str:
    # Save headers carry timestamps, the "legacy tables present" warning is not state, and packet
    # counters move with background traffic (IPv6 neighbour discovery).
    lines = (re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in text.splitlines() if not ln.startswith("#"))
    return "\n".join(lines)


def _without_pristine_tables(text: str) -> str:
    """Drop legacy tables that hold nothing (builtin chains, ACCEPT, no rules).

    The only thing a legacy rollback/cleanup cannot undo: the kernel instantiates a legacy table on
    first use and offers no way to remove it short of deleting the namespace. Such a table filters
    nothing; every other difference still fails the comparison.
    """
    blocks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line == "COMMIT":
            blocks.append(current)
            current = []
    keep = [b for b in blocks if any(not (ln.startswith(("*", "COMMIT")) or
                                          (ln.startswith(":") and ln.endswith("ACCEPT [0:0]"))) for ln in b)]
    return "\n".join(ln for b in keep for ln in b)


def snapshot(ns: Netns) -> dict[str, str]:
    """Every piece of state an apply can touch. Legacy is read only where its tables exist."""
    out: dict[str, str] = {}
    for variant in ("legacy", "nft"):
        xt = Xtables(variant)
        for fam in (4, 6):
            text = _clean(xt.save(ns, fam))
            out[xt.binary(fam, "save")] = _without_pristine_tables(text) if variant == "legacy" else text
    out["nft"] = re.sub(r"counter packets \d+ bytes \d+", "counter", ns.run(["nft", "list", "ruleset"]).stdout)
    for ip_fam in ("-4", "-6"):
        out[f"ip {ip_fam} rule"] = ns.run(["ip", ip_fam, "rule"]).stdout
        out[f"ip {ip_fam} route"] = ns.run(["ip", ip_fam, "route", "show", "table", "all"]).stdout
    out["lo"] = ns.run(["ip", "addr", "show", "dev", "lo"]).stdout
    return out


def add_user_state(ns: Netns, backend: str) -> None:
    """Pre-existing non-Istio rules, including one identical to a rule Istio will add (-c eth9)."""
    variant = "legacy" if backend in ("iptables-legacy", "iptc") else "nft"
    for tool in (f"iptables-{variant}", f"ip6tables-{variant}"):
        ns.run([tool, "-t", "nat", "-A", "PREROUTING", "-i", "eth9", "-j", "RETURN"])
        ns.run([tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"])
        ns.run([tool, "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "9998", "-j", "ACCEPT"])
    ns.run(["nft", "add table inet user; add chain inet user c { type filter hook input priority 0 ; }; "
                   "add rule inet user c tcp dport 7777 accept"])


def wrapper_dir(tmp_path: Path, name: str, body: str) -> str:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(d)

