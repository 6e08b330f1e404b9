"""iptables-save / ip6tables-save output (legacy or nft backend) -> RuleSet.

The kernel prints rules back in its own spelling: option order differs, implicit `-m tcp`
appears, marks become hex, MARK becomes `--set-xmark`, TPROXY gains `--on-ip`. This parser
normalises all of that to the builder's (Istio's) spelling so rules compare by `Rule.key()`.
Matches it does not understand are kept as `unsupported:<module>` so callers can say so.
"""

from __future__ import annotations

import shlex

from meshnet.errors import MeshnetError
from meshnet.model import Family, Match, Rule, RuleSet, Target

FULL_MASK = 0xFFFFFFFF


class ParseError(MeshnetError):
    pass


def _mark(value: str) -> str:
    """'0x539' -> '1337'; '0x539/0xffffffff' -> '1337/0xffffffff' (mask kept in hex, like Istio)."""
    val, sep, mask = value.partition("/")
    number = str(int(val, 0))
    return f"{number}/{mask}" if sep else number


def _target(name: str, args: list[str]) -> Target:
    opts: dict[str, str] = {}
    flags: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            opts[tok] = args[i + 1]
            i += 2
        else:
            flags.append(tok)
            i += 1
    if name == "REDIRECT":
        port = opts.get("--to-ports") or opts.get("--to-port")
        return Target(name, ("--to-ports", port) if port else ())
    if name == "MARK":
        value = opts.get("--set-mark") or opts.get("--set-xmark") or "0"
        val, _, mask = value.partition("/")
        if not mask or int(mask, 0) == FULL_MASK:
            return Target(name, ("--set-mark", str(int(val, 0))))
        return Target(name, ("--set-xmark", _mark(value)))
    if name == "CONNMARK":
        for flag in ("--save-mark", "--restore-mark"):
            if flag in flags:
                return Target(name, (flag,))
        return Target(name, tuple(args))
    if name == "TPROXY":
        mark = opts.get("--tproxy-mark", "0")
        val, _, mask = mark.partition("/")
        mark_text = f"{int(val, 0)}/{mask or '0xffffffff'}"
        out = ["--tproxy-mark", mark_text, "--on-port", opts.get("--on-port", "0")]
        on_ip = opts.get("--on-ip")
        if on_ip and on_ip not in ("0.0.0.0", "::"):
            out += ["--on-ip", on_ip]
        return Target(name, tuple(out))
    if name == "CT":
        return Target(name, ("--zone", opts["--zone"]) if "--zone" in opts else tuple(args))
    return Target(name, tuple(args))


def parse_rule(table: str, tokens: list[str]) -> Rule:
    """Parse the tokens after `-A` (chain first)."""
    chain = tokens[0]
    matches: list[Match] = []
    target = Target("")
    neg = False
    module = ""
    i = 1
    simple = {"-s": "src", "--source": "src", "-d": "dst", "--destination": "dst", "-i": "in",
              "--in-interface": "in", "-o": "out", "--out-interface": "out", "-p": "proto", "--protocol": "proto"}
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "!":
            neg = True
            i += 1
            continue
        if tok in simple:
            matches.append(Match(simple[tok], nxt, neg))
        elif tok == "-m" or tok == "--match":
            module = nxt
        elif tok in ("-j", "--jump", "-g", "--goto"):
            target = _target(nxt, tokens[i + 2:])
            break
        elif tok in ("--dport", "--destination-port", "--sport", "--source-port") and module in ("tcp", "udp", ""):
            matches.append(Match("dport" if tok in ("--dport", "--destination-port") else "sport", nxt, neg))
        elif tok in ("--dports", "--destination-ports") and module == "multiport":
            matches.append(Match("dports", nxt, neg))
        elif tok in ("--uid-owner", "--gid-owner") and module == "owner":
            matches.append(Match(tok[2:5], nxt, neg))
        elif tok == "--ctstate" and module == "conntrack":
            matches.append(Match("ctstate", nxt, neg))
        elif tok == "--mark" and module in ("mark", "connmark"):
            matches.append(Match(module, _mark(nxt), neg))
        elif tok == "--socket-exists" and module == "owner":
            matches.append(Match("socket_exists", "", neg))
            i += 1
            neg = False
            continue
        elif tok == "--match-set" and module == "set" and i + 2 < len(tokens):
            matches.append(Match("set", f"{nxt} {tokens[i + 2]}", neg))
            i += 3
            neg = False
            continue
        elif tok == "--comment" and module == "comment":
            pass  # comments do not change what a rule matches
        elif tok.startswith("-"):
            # An option of a match we do not model: keep it, flagged, with its argument if any.
            arg = nxt if nxt and not nxt.startswith("-") and nxt != "!" else ""
            matches.append(Match(f"unsupported:{module or 'core'}", f"{tok} {arg}".strip(), neg))
            if not arg:
                i += 1
                neg = False
                continue
        else:
            raise ParseError(f"cannot parse iptables rule near {tok!r}: -A {' '.join(tokens)}")
        neg = False
        i += 2
    if not target.name:
        target = Target("")  # a rule without target (counts only)
    return Rule(table, chain, tuple(matches), target)


def parse_save(text: str, family: Family) -> RuleSet:
    rs = RuleSet(family)
    table = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and "] " in line:  # `iptables-save -c` prefixes rules with [packets:bytes]
            line = line.split("] ", 1)[1]
        if line.startswith("*"):
            table = line[1:].strip()
            rs.table(table)
        elif line == "COMMIT":
            table = ""
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            chain = rs.table(table).chain(name)
            policy = rest.split(" ", 1)[0]
            chain.policy = None if policy == "-" else policy
        elif line.startswith("-A ") or line.startswith("-I "):
            try:
                tokens = shlex.split(line)
            except ValueError as exc:
                raise ParseError(f"line {lineno}: {exc}") from None
            if tokens[0] == "-I":  # `-I CHAIN [N]`: restore text, not save output
                pos = 1
                if len(tokens) > 2 and tokens[2].isdigit():
                    pos = int(tokens[2])
                    del tokens[2]
                rule = parse_rule(table, tokens[1:])
                rs.table(table).chain(rule.chain).rules.insert(pos - 1, rule)
            else:
                rule = parse_rule(table, tokens[1:])
                rs.table(table).chain(rule.chain).rules.append(rule)
        elif line.startswith("-N "):
            rs.table(table).chain(line[3:].strip())
        else:
            raise ParseError(f"line {lineno}: unexpected {line[:60]!r}")
    return rs
