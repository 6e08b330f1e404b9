"""Collision risk from the rules alone: which destination ports are funnelled into one capture port.

Works on iptables-save text (either backend) and `nft list ruleset` text, so it needs no traffic and
can run on a support bundle. It follows jumps from the PREROUTING/OUTPUT hooks, remembers the ports
that an earlier rule RETURNs (Istio's 15008/15090/15021/15020 exclusions) and records each
REDIRECT/DNAT to a single port and each TPROXY with the ports that reach it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Set as AbstractSet

from meshnet.lite.records import dataclass, field
from meshnet.plan.match_kinds import KINDS

ALL = None  # "every destination port" in a port set


@dataclass
class Capture:
    """One interception target reached from a hook."""

    kind: str  # "redirect" | "dnat" | "tproxy"
    direction: str  # "inbound" (PREROUTING) | "outbound" (OUTPUT)
    to_port: int | None  # None: a port range, which cannot collide the same way
    dports: frozenset[int] | None  # None = all ports except `excluded`
    excluded: frozenset[int]
    rule: str
    backend: str

    @property
    def funnel(self) -> bool:
        """Several destination ports end on one port: the precondition of the collision."""
        return self.kind in ("redirect", "dnat") and self.to_port is not None and (
            self.dports is None or len(self.dports) > 1)

    def ports_text(self) -> str:
        if self.dports is None:
            ex = ",".join(map(str, sorted(self.excluded)))
            return "all TCP ports" + (f" except {ex}" if ex else "")
        return "ports " + ",".join(map(str, sorted(self.dports)))

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "direction": self.direction, "to_port": self.to_port,
                "dports": sorted(self.dports) if self.dports is not None else "all",
                "excluded": sorted(self.excluded), "rule": self.rule, "backend": self.backend}


@dataclass
class RulesInfo:
    captures: list[Capture] = field(default_factory=list)
    snat: list[str] = field(default_factory=list)  # explicit SNAT/MASQUERADE rules
    sources: list[str] = field(default_factory=list)  # which dumps were read

    @property
    def inbound_funnels(self) -> list[Capture]:
        return [c for c in self.captures if c.direction == "inbound" and c.funnel]

    @property
    def tproxy_inbound(self) -> bool:
        return any(c.kind == "tproxy" and c.direction == "inbound" for c in self.captures)

    def merge(self, other: RulesInfo) -> None:
        self.captures += other.captures
        self.snat += other.snat
        self.sources += other.sources


@dataclass
class _Rule:
    dports: frozenset[int] | None  # None: no dport match
    neg: bool
    proto: str | None
    action: tuple[str, object]
    text: str


def _ports(spec: str) -> frozenset[int]:
    out: set[int] = set()
    for part in spec.replace(" ", "").strip("{}").split(","):
        if not part:
            continue
        a, _, b = part.replace("-", ":").partition(":")
        lo = int(a)
        out.update(range(lo, int(b) + 1) if b else [lo])
    return frozenset(out)


# --------------------------------------------------------------------------- iptables-save
def parse_iptables_save(text: str, backend: str = "iptables") -> dict[str, dict[str, list[_Rule]]]:
    """{table: {chain: [rules]}} from iptables-save text."""
    tables: dict[str, dict[str, list[_Rule]]] = {}
    cur: dict[str, list[_Rule]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":") and cur is not None:
            cur.setdefault(line[1:].split()[0], [])
        elif line.startswith(("-A ", "-I ")) and cur is not None:
            try:
                args = shlex.split(line)
            except ValueError:
                continue
            chain = args[1]
            rule = _ipt_rule(args[3:] if args[0] == "-I" and len(args) > 2 and args[2].isdigit()
                             else args[2:], line)
            rules = cur.setdefault(chain, [])
            if args[0] == "-I":
                pos = int(args[2]) - 1 if len(args) > 2 and args[2].isdigit() else 0
                rules.insert(pos, rule)
            else:
                rules.append(rule)
    return tables


# How iptables-save spells a destination port and the protocol: from the match kinds' table.
_DPORT_OPTIONS = frozenset(opt for kind in ("dport", "dports") for _, opt in KINDS[kind].options)
_PROTO_OPTIONS = frozenset(KINDS["proto"].core)


def _ipt_rule(args: list[str], text: str) -> _Rule:
    dports: frozenset[int] | None = None
    neg = False
    proto = None
    action: tuple[str, object] = ("none", None)
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a == "!" and nxt in _DPORT_OPTIONS:
            neg = True
        elif a in _PROTO_OPTIONS:
            proto = nxt
        elif a in _DPORT_OPTIONS and nxt:
            dports = _ports(nxt)
        elif a in ("-j", "-g"):
            target = nxt
            opts = args[i + 2:]
            action = _ipt_target(target, opts)
            break
        i += 1
    return _Rule(dports, neg, proto, action, text)


def _ipt_target(target: str, opts: list[str]) -> tuple[str, object]:
    def opt(name: str) -> str | None:
        return opts[opts.index(name) + 1] if name in opts and opts.index(name) + 1 < len(opts) else None

    if target in ("REDIRECT", "DNAT", "TPROXY"):
        spec = opt("--to-ports") or opt("--to-port") or opt("--on-port") or opt("--to-destination") or ""
        port = spec.rsplit(":", 1)[-1] if target == "DNAT" else spec
        if target == "DNAT" and ":" not in spec:
            return ("dnat", None)  # address only: ports are kept, nothing is funnelled
        single = port.isdigit()
        return (target.lower(), int(port) if single else None)
    if target in ("SNAT", "MASQUERADE"):
        return ("snat", None)
    if target in ("RETURN", "ACCEPT", "DROP", "REJECT"):
        return (target.lower(), None)
    if target and target[0].isupper() and target not in ("MARK", "CONNMARK", "CT", "LOG"):
        return ("jump", target)
    return ("other", target)


# --------------------------------------------------------------------------- nft list ruleset
_NFT_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_NFT_HOOK = re.compile(r"type (\w+) hook (\w+)")


def parse_nft(text: str, skip_tables: AbstractSet[str] = frozenset()) -> tuple[dict[str, list[_Rule]], dict[str, str]]:
    """Chains keyed "family table chain", and hook -> chain keys; tables in skip_tables ignored."""
    chains: dict[str, list[_Rule]] = {}
    hooks: dict[str, str] = {}
    table = ""
    chain = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^table (\w+) (\S+) \{", line)
        if m:
            table = f"{m.group(1)} {m.group(2)}"
            continue
        m = _NFT_CHAIN.match(raw)
        if m:
            chain = f"{table} {m.group(1)}"
            chains.setdefault(chain, [])
            continue
        if not chain or table in skip_tables or line in ("}", ""):
            continue
        m = _NFT_HOOK.search(line)
        if m:
            if m.group(2) in ("prerouting", "output"):
                hooks.setdefault(f"{m.group(2)}", chain)
                hooks[f"{m.group(2)}:{chain}"] = chain
            continue
        chains[chain].append(_nft_rule(line, table))
    return chains, hooks


def _nft_rule(line: str, table: str) -> _Rule:
    dports = None
    neg = False
    m = re.search(r"\b(?:tcp|th) dport (!= )?(\{[^}]*\}|\d+(?:-\d+)?)", line)
    if m:
        neg = bool(m.group(1))
        dports = _ports(m.group(2))
    action: tuple[str, object] = ("none", None)
    if (m := re.search(r"\bredirect to :?(\d+)(-\d+)?", line)):
        action = ("redirect", None if m.group(2) else int(m.group(1)))
    elif (m := re.search(r"\bdnat (?:ip6? )?to \S*?:(\d+)(-\d+)?\b", line)):
        action = ("dnat", None if m.group(2) else int(m.group(1)))
    elif (m := re.search(r"\btproxy (?:ip6? )?to \S*?:(\d+)", line)):
        action = ("tproxy", int(m.group(1)))
    elif re.search(r"\b(snat|masquerade)\b", line):
        action = ("snat", None)
    elif (m := re.search(r"\b(jump|goto) (\S+)", line)):
        action = ("jump", f"{table} {m.group(2)}")
    elif re.search(r"\breturn\b", line):
        action = ("return", None)
    elif re.search(r"\b(accept|drop)\b", line):
        action = ("accept", None)
    return _Rule(dports, neg, "tcp" if dports is not None else None, action, line)


# --------------------------------------------------------------------------- evaluation
def _walk(chains: dict[str, list[_Rule]], start: str, direction: str, backend: str, out: RulesInfo,
          excluded: frozenset[int] = frozenset(), only: frozenset[int] | None = None, depth: int = 0) -> None:
    if depth > 16:
        return
    for r in chains.get(start, []):
        # Ports this rule applies to, given the path so far.
        if r.dports is not None and not r.neg:
            ports = r.dports - excluded if only is None else (r.dports & only) - excluded
            if not ports:
                continue
            here_only: frozenset[int] | None = frozenset(ports)
            here_ex = excluded
        elif r.dports is not None and r.neg:
            here_only = None if only is None else only - r.dports
            here_ex = excluded | r.dports
        else:
            here_only, here_ex = only, excluded
        kind, arg = r.action
        if kind == "return" and r.dports is not None and not r.neg:
            excluded = excluded | r.dports  # Istio's per-port exclusions before the catch-all
        elif kind == "return" and r.dports is None and r.proto in (None, "tcp") and _unconditional(r):
            return
        elif kind == "jump":
            _walk(chains, str(arg), direction, backend, out, here_ex, here_only, depth + 1)
        elif kind in ("redirect", "dnat", "tproxy"):
            out.captures.append(Capture(kind, direction, arg if isinstance(arg, int) else None,
                                        here_only, here_ex, r.text, backend))
        elif kind == "snat":
            out.snat.append(r.text)


def _unconditional(r: _Rule) -> bool:
    """A RETURN with no match at all ends the chain for everyone."""
    return not re.search(r"\s(-[sdio]|-m|!)\s|\b(saddr|daddr|iif|oif|mark|skuid|meta)\b", f" {r.text} ")


def analyze_iptables(text: str, backend: str = "iptables") -> RulesInfo:
    tables = parse_iptables_save(text, backend)
    out = RulesInfo(sources=[backend])
    if "nat" in tables:
        _walk(tables["nat"], "PREROUTING", "inbound", backend, out)
        _walk(tables["nat"], "OUTPUT", "outbound", backend, out)
        for chain in ("POSTROUTING", "INPUT"):
            for r in tables["nat"].get(chain, []):
                if r.action[0] == "snat":
                    out.snat.append(r.text)
    if "mangle" in tables:
        _walk(tables["mangle"], "PREROUTING", "inbound", backend, out)
    return out


def analyze_nft(text: str, skip_tables: AbstractSet[str] = frozenset()) -> RulesInfo:
    chains, hooks = parse_nft(text, skip_tables)
    out = RulesInfo(sources=["nft"])
    for key, chain in hooks.items():
        if ":" in key:
            _walk(chains, chain, "inbound" if key.startswith("prerouting") else "outbound", "nft", out)
    for rules in chains.values():
        for r in rules:
            if r.action[0] == "snat" and r.text not in out.snat:
                out.snat.append(r.text)
    return out
