"""What the live Istio rules intend, read from their structure alone (no spec needed).

Istio's rule sets always have the same skeleton: ISTIO_REDIRECT holds the outbound REDIRECT,
ISTIO_IN_REDIRECT / ISTIO_TPROXY the inbound one, the proxy's uid/gid RETURN in ISTIO_OUTPUT,
excluded ports and CIDRs RETURN by dport/daddr, DNS goes to 15053. Those parts survive most
breakage (a deleted catch-all, a missing jump), so the intent can be recovered from them and the
live rules then checked against it with probe packets. Both iptables (either backend) and native
nftables rules are read through one small normal form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshnet.apply.backends import NFTABLES
from meshnet.lite.records import dataclass, field

if TYPE_CHECKING:
    from meshnet.plan.model import Family
    from meshnet.state.live import LiveState

# Ports Istio always excludes from inbound capture (status, health, metrics), in both modes.
ALWAYS_BYPASS_INBOUND = (15020, 15021, 15090)
HBONE_PORT = 15008  # excluded in nat ISTIO_INBOUND: so bypassed in REDIRECT mode
DNS_PROXY_PORT = 15053
DEFAULT_OUTBOUND, DEFAULT_INBOUND = 15001, 15006


@dataclass(frozen=True)
class NRule:
    """One rule in normal form: `matches` as (kind, value, negated), `action` as one word + arg."""

    table: str
    chain: str  # lower case, '-' separated: istio-output, output, prerouting, ...
    matches: tuple[tuple[str, str, bool], ...]
    action: str  # return | accept | drop | jump | redirect | tproxy | other
    arg: str = ""  # jump target (normalized), redirect/tproxy port
    text: str = ""  # the rule as its backend prints it

    def has(self, kind: str, negated: bool | None = None) -> list[str]:
        return [v for k, v, n in self.matches if k == kind and (negated is None or n == negated)]


@dataclass
class Intent:
    backend: str
    mode: str = "REDIRECT"  # or TPROXY
    outbound_port: int | None = None
    inbound_port: int | None = None
    proxy_uids: set[int] = field(default_factory=set)
    proxy_gids: set[int] = field(default_factory=set)
    inbound_excluded: set[int] = field(default_factory=set)
    inbound_included: set[int] | None = None  # None: every port
    outbound_excluded_ports: set[int] = field(default_factory=set)
    outbound_excluded_cidrs: list[str] = field(default_factory=list)
    outbound_included_cidrs: list[str] = field(default_factory=list)  # empty: every address
    outbound_included_ports: set[int] = field(default_factory=set)  # -q: only these ports (with no CIDR)
    dns_capture: bool = False
    dns_servers: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def ids(s: set[int]) -> str:
            return ",".join(map(str, sorted(s))) or "none"

        out = [f"{self.backend}: mode {self.mode}, outbound -> :{self.outbound_port or '-'}, "
               f"inbound -> :{self.inbound_port or '-'}, proxy uid {ids(self.proxy_uids)} gid {ids(self.proxy_gids)}"]
        extra = []
        if self.inbound_included is not None:
            extra.append(f"inbound ports {ids(self.inbound_included)}")
        if self.inbound_excluded:
            extra.append(f"inbound excluded {ids(self.inbound_excluded)}")
        if self.outbound_excluded_ports:
            extra.append(f"outbound excluded ports {ids(self.outbound_excluded_ports)}")
        if self.outbound_excluded_cidrs:
            extra.append(f"outbound excluded {','.join(self.outbound_excluded_cidrs)}")
        if self.outbound_included_cidrs:
            extra.append(f"outbound only {','.join(self.outbound_included_cidrs)}")
        if self.outbound_included_ports:
            extra.append(f"outbound ports {ids(self.outbound_included_ports)}")
        extra.append("DNS capture on" + (f" ({','.join(self.dns_servers)})" if self.dns_servers else "")
                     if self.dns_capture else "DNS capture off")
        return [*out, "; ".join(extra)]


def norm_chain(name: str) -> str:
    return name.lower().replace("_", "-")


# ----------------------------------------------------------------- normal forms
_XT_KINDS = {"proto": "proto", "dst": "dst", "src": "src", "out": "oif", "in": "iif", "dport": "dport",
             "dports": "dport", "uid": "uid", "gid": "gid"}


def xt_rules(live: LiveState, backend: str, family: Family) -> list[NRule]:
    out = []
    rs = live.ruleset(backend, family)
    for table in rs.tables.values():
        for chain in table.chains.values():
            for r in chain.rules:
                matches = tuple((_XT_KINDS.get(m.kind, m.kind), m.value, m.negated) for m in r.matches)
                t = r.target
                if t.is_jump_to_chain:
                    action, arg = "jump", norm_chain(t.name)
                elif t.name == "REDIRECT" and "--to-ports" in t.args:
                    action, arg = "redirect", t.args[t.args.index("--to-ports") + 1].split("-")[0]
                elif t.name == "REDIRECT" and "--to-port" in t.args:
                    action, arg = "redirect", t.args[t.args.index("--to-port") + 1].split("-")[0]
                elif t.name == "TPROXY" and "--on-port" in t.args:
                    action, arg = "tproxy", t.args[t.args.index("--on-port") + 1]
                elif t.name in ("RETURN", "ACCEPT", "DROP"):
                    action, arg = t.name.lower(), ""
                else:
                    action, arg = "other", t.name
                out.append(NRule(table.name, norm_chain(chain.name), matches, action, arg,
                                 f"-t {table.name} {r}"))
    return out


def _nft_match(tok: str) -> tuple[str, str, bool] | None:
    words = tok.split(" ")
    if words[0] == "meta" and len(words) > 1 and words[1] in ("skuid", "skgid"):
        words = words[1:]
    neg = "!=" in words
    words = [w for w in words if w != "!="]
    head = words[0]
    if head == "meta" and words[1] == "l4proto":
        return ("proto", words[2], neg)
    if head in ("ip", "ip6") and words[1] in ("daddr", "saddr"):
        return ("dst" if words[1] == "daddr" else "src", " ".join(words[2:]).strip("{} "), neg)
    if head in ("tcp", "udp") and words[1] in ("dport", "sport"):
        return (words[1], " ".join(words[2:]).strip("{} ").replace(" ", ""), neg)
    if head in ("skuid", "skgid"):
        return ("uid" if head == "skuid" else "gid", words[1], neg)
    if head in ("oifname", "iifname"):
        return ("oif" if head == "oifname" else "iif", words[1].strip('"'), neg)
    return None


def nft_rules(live: LiveState) -> list[NRule]:
    out: list[NRule] = []
    if live.nft is None:
        return out
    for (table, chain), rules in live.nft.chains.items():
        for r in rules:
            matches = []
            for tok in r.matches:
                m = _nft_match(tok)
                if m:
                    matches.append(m)
                if tok.startswith(("tcp ", "udp ")):
                    matches.append(("proto", tok.split(" ")[0], False))
            action, arg = "other", ""
            for tok in (*r.matches, *r.action):
                w = tok.split(" ")
                if w[0] == "redirect":
                    action, arg = "redirect", w[-1].lstrip(":")
                elif w[0] == "tproxy":
                    action, arg = "tproxy", w[-1].rsplit(":", 1)[1]
                elif w[0] in ("jump", "goto") and action == "other":
                    action, arg = "jump", w[1]
                elif tok in ("return", "accept", "drop") and action == "other":
                    action = tok
            out.append(NRule(table, chain, tuple(matches), action, arg,
                             f"inet istio-proxy-{table} {chain}: {r.body()}"))
    return out


# ----------------------------------------------------------------- inference
def infer(rules: list[NRule], backend: str) -> Intent:
    it = Intent(backend)
    chains: dict[tuple[str, str], list[NRule]] = {}
    for r in rules:
        chains.setdefault((r.table, r.chain), []).append(r)
    # A port that is not a number (a foreign rule's odd target) tells nothing about Istio's intent.
    rules = [r for r in rules if r.action not in ("redirect", "tproxy") or r.arg.isdigit()]
    for r in rules:
        if r.action == "redirect" and r.chain == "istio-redirect":
            it.outbound_port = int(r.arg)
        elif r.action == "redirect" and r.chain == "istio-in-redirect":
            it.inbound_port = it.inbound_port or int(r.arg)
        elif r.action == "tproxy":
            it.mode, it.inbound_port = "TPROXY", int(r.arg)
        if r.action == "redirect" and (int(r.arg) == DNS_PROXY_PORT or "53" in r.has("dport", False)):
            it.dns_capture = True
            it.dns_servers += [d for d in r.has("dst", False) if d not in it.dns_servers]
    for r in chains.get(("nat", "istio-output"), []):
        plain = not r.has("oif")
        if r.action == "return" and plain:
            it.proxy_uids |= {int(v) for v in r.has("uid", False) if v.isdigit()}
            it.proxy_gids |= {int(v) for v in r.has("gid", False) if v.isdigit()}
            if not r.has("uid") and not r.has("gid"):
                it.outbound_excluded_ports |= {int(p) for v in r.has("dport", False) for p in _ports(v)}
                it.outbound_excluded_cidrs += [d for d in r.has("dst", False)
                                               if not d.startswith(("127.", "::1"))]
        if r.action == "jump" and r.arg == "istio-redirect" and plain:
            it.outbound_included_cidrs += r.has("dst", False)
            if not r.has("dst") and not r.has("uid") and not r.has("gid"):
                it.outbound_included_ports |= {int(p) for v in r.has("dport", False) for p in _ports(v)}
    jumps = {r.arg for r in rules if r.action == "jump"}
    if any(r.table == "nat" and r.action == "jump" and r.arg == "istio-output-dns" for r in rules):
        it.dns_capture = True  # the chain is there even if its REDIRECTs are gone
    if it.dns_capture:  # the raw table's zone rules name the servers too
        for r in rules:
            if r.table == "raw" and "53" in r.has("dport", False):
                it.dns_servers += [d for d in r.has("dst", False) if d not in it.dns_servers]
    if it.outbound_port is None and "istio-redirect" in jumps:
        it.outbound_port = DEFAULT_OUTBOUND  # the chain was emptied; Istio's default port
    if it.inbound_port is None and jumps & {"istio-in-redirect", "istio-tproxy", "istio-inbound"} and \
            any(r.chain == "istio-inbound" and r.action == "jump" for r in rules):
        it.inbound_port = DEFAULT_INBOUND
    capture_table = "mangle" if it.mode == "TPROXY" else "nat"
    if it.mode != "TPROXY":
        it.inbound_excluded.add(HBONE_PORT)
    it.inbound_excluded |= set(ALWAYS_BYPASS_INBOUND)
    included: set[int] = set()
    every = False
    for r in chains.get((capture_table, "istio-inbound"), []):
        if r.has("iif") or r.has("src") or r.has("mark"):
            continue
        ports = {int(p) for v in r.has("dport", False) for p in _ports(v)}
        if r.action == "return":
            it.inbound_excluded |= ports
        elif r.action == "jump" and r.arg in ("istio-in-redirect", "istio-tproxy"):
            if ports:
                included |= ports
            else:
                every = True
    it.inbound_included = None if every or not included else included
    return it


def _ports(value: str) -> list[int]:
    out = []
    for item in value.replace(" ", "").split(","):
        lo, _, hi = item.replace("-", ":").partition(":")
        if lo.isdigit():
            out += list(range(int(lo), int(hi) + 1)) if hi.isdigit() and int(hi) - int(lo) < 64 else [int(lo)]
    return out


def intents(live: LiveState) -> dict[tuple[str, int], tuple[Intent, list[NRule]]]:
    """(backend, family) -> its intent and normal-form rules, for every backend holding Istio rules."""
    out: dict[tuple[str, int], tuple[Intent, list[NRule]]] = {}
    for backend in live.istio_backends():
        if backend == NFTABLES:
            rules = nft_rules(live)
            intent = infer(rules, backend)
            for fam in (4, 6):
                out[(backend, fam)] = (intent, rules)
            continue
        for fam in live.families(backend):
            rules = xt_rules(live, backend, fam)
            out[(backend, fam)] = (infer(rules, backend), rules)
    return out
