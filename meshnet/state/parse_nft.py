"""`nft -j list ruleset` -> Istio's `inet istio-proxy-{nat,mangle,raw}` tables as NftRule values.

The kernel hands rules back in its own form: `meta l4proto tcp` disappears when a `tcp dport`
match implies it, `/32` host prefixes are dropped, `skuid` becomes `meta skuid`, marks are
numbers, `ct state` values come back reordered. `to_text` writes each JSON expression in the
builder's spelling and `nft_key` removes the remaining differences on both sides, so a live rule
and a built rule compare equal exactly when they mean the same thing.
Expressions this module does not know are kept as `unsupported:<json>` tokens, never dropped.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from meshnet.errors import MeshnetError
from meshnet.lite.records import dataclass, field
from meshnet.plan.nft_model import TABLE_PREFIX, NftRule

UNSUPPORTED = "unsupported:"
NftKey = tuple[str, str, tuple[str, ...], tuple[str, ...]]


class NftParseError(MeshnetError):
    pass


@dataclass(frozen=True)
class BaseChain:
    type: str
    hook: str
    priority: int
    policy: str


@dataclass
class NftRuleset:
    """Istio's nft tables as read from the kernel. `chains` keys are (table, chain), table without prefix."""

    chains: dict[tuple[str, str], list[NftRule]] = field(default_factory=dict)
    base_chains: dict[tuple[str, str], BaseChain] = field(default_factory=dict)
    other_tables: list[str] = field(default_factory=list)  # "family name" of every non-Istio table

    @property
    def empty(self) -> bool:
        return not self.chains

    def rules(self, table: str, chain: str) -> list[NftRule]:
        return self.chains.get((table, chain), [])

    def unsupported(self) -> list[NftRule]:
        return [r for rules in self.chains.values() for r in rules if is_unsupported(r)]


def is_unsupported(rule: NftRule) -> bool:
    return any(tok.startswith(UNSUPPORTED) for tok in (*rule.matches, *rule.action))


def parse_nft_json(text: str, prefix: str = TABLE_PREFIX) -> NftRuleset:
    """Istio's tables named `prefix*` (sidecar `istio-proxy-`, ambient `istio-ambient-`)."""
    try:
        doc = json.loads(text) if text.strip() else {"nftables": []}
    except json.JSONDecodeError as exc:
        raise NftParseError(f"nft -j output is not JSON: {exc}") from None
    items = doc.get("nftables", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise NftParseError("nft -j output has no \"nftables\" list")
    out = NftRuleset()
    for item in items:
        try:
            _add_item(out, item, prefix)
        except (KeyError, TypeError, ValueError, AttributeError):
            # Not in the shape nft prints: a foreign object is no concern of ours; one in Istio's
            # tables is kept as a rule nothing can evaluate (explain: uncertain; diff: a difference).
            obj = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else None
            if isinstance(obj, dict) and "rule" in item and _is_istio(obj, "table", prefix):
                bad = UNSUPPORTED + json.dumps(obj.get("expr"), sort_keys=True, default=str)
                key = (str(obj["table"]).removeprefix(prefix), str(obj.get("chain", "?")))
                out.chains.setdefault(key, []).append(NftRule(key[0], key[1], (bad,), (), None))
    return out


def _add_item(out: NftRuleset, item: Any, prefix: str) -> None:
    """One object of the list: Istio's chains and rules are kept, every other table only named."""
    if not isinstance(item, dict):
        return
    if "table" in item:
        t = item["table"]
        if not _is_istio(t, prefix=prefix):
            out.other_tables.append(f"{t.get('family')} {t.get('name')}")
    elif "chain" in item and _is_istio(item["chain"], "table", prefix):
        c = item["chain"]
        key = (c["table"].removeprefix(prefix), c["name"])
        out.chains.setdefault(key, [])
        if "hook" in c:
            out.base_chains[key] = BaseChain(c.get("type", ""), c["hook"], int(c.get("prio", 0)),
                                             c.get("policy", "accept"))
    elif "rule" in item and _is_istio(item["rule"], "table", prefix):
        r = item["rule"]
        rule = rule_from_exprs(r["table"].removeprefix(prefix), r["chain"], r.get("expr", []))
        out.chains.setdefault((rule.table, rule.chain), []).append(rule)


def _is_istio(obj: dict[str, Any], key: str = "name", prefix: str = TABLE_PREFIX) -> bool:
    return obj.get("family") == "inet" and str(obj.get(key, "")).startswith(prefix)


def rule_from_exprs(table: str, chain: str, exprs: list[dict[str, Any]]) -> NftRule:
    """Statements before `counter` are matches, after it the action (the builder's split).

    Without a counter, every match expression is a match and the rest is the action.
    """
    idx = next((i for i, e in enumerate(exprs) if "counter" in e), None)
    if idx is not None:
        matches = tuple(to_text(e) for e in exprs[:idx])
        action = tuple(to_text(e) for e in exprs[idx + 1:] if "counter" not in e)
    else:
        matches = tuple(to_text(e) for e in exprs if "match" in e)
        action = tuple(to_text(e) for e in exprs if "match" not in e)
    return NftRule(table, chain, matches, action, _family(matches), idx is not None)


def _family(matches: tuple[str, ...]) -> int | None:
    for m in matches:
        if m.startswith(("ip6 ", "tproxy ip6 ")):
            return 6
        if m.startswith(("ip ", "tproxy ip ")):
            return 4
    return None


# ----------------------------------------------------------------- expressions -> text
def to_text(expr: dict[str, Any]) -> str:
    try:
        text = _to_text(expr)
    except (KeyError, TypeError, ValueError, AttributeError):
        text = None
    return text if text is not None else UNSUPPORTED + json.dumps(expr, sort_keys=True, separators=(",", ":"))


def _to_text(expr: dict[str, Any]) -> str | None:
    (kind, body), = expr.items()
    if kind == "match":
        return _match(body)
    if kind in ("accept", "drop", "return", "continue"):
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "redirect":
        return f"redirect to :{body['port']}" if body and "port" in body else "redirect"
    if kind == "tproxy":
        addr = f"{body['addr']}" if "addr" in body else ""
        return f"tproxy {body['family']} to {addr}:{body['port']}"
    if kind == "mangle":
        return _mangle(body)
    if kind == "snat" and set(body) <= {"addr", "family"} and isinstance(body.get("addr"), str):
        return f"snat to {body['addr']}"
    return None


def _lhs(left: dict[str, Any]) -> str | None:
    if "&" in left:  # a masked value, e.g. `meta mark & 0xfff` (ambient's marks)
        base, mask = left["&"]
        inner = _lhs(base)
        if inner is None or not isinstance(mask, int) or isinstance(mask, bool):
            return None
        return f"{inner} & {hex(mask)}"
    if "meta" in left:
        key = left["meta"]["key"]
        return {"mark": "mark", "iifname": "iifname", "oifname": "oifname", "skuid": "skuid",
                "skgid": "skgid", "l4proto": "meta l4proto"}.get(key)
    if "payload" in left:
        p = left["payload"]
        if p.get("protocol") in ("ip", "ip6", "tcp", "udp") and p.get("field") in ("saddr", "daddr", "sport", "dport"):
            return f"{p['protocol']} {p['field']}"
        return None
    if "ct" in left and left["ct"].get("key") in ("state", "mark", "zone"):
        return f"ct {left['ct']['key']}"
    return None


def _value(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, str)):
        return str(v)
    if isinstance(v, list):  # flag values such as ct state
        return ",".join(str(x) for x in v)
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if isinstance(v, dict) and "range" in v:
        lo, hi = v["range"]
        return f"{lo}-{hi}"
    if isinstance(v, dict) and "set" in v:
        items = [_value(x) for x in v["set"]]
        if any(i is None for i in items):
            return None
        return "{ " + ", ".join(str(i) for i in items) + " }"
    return None


def _match(body: dict[str, Any]) -> str | None:
    lhs = _lhs(body["left"])
    rhs = _value(body["right"])
    op = body.get("op", "==")
    if lhs is None or rhs is None or op not in ("==", "!=", "in"):
        return None
    neg = "!= " if op == "!=" else ""
    return f"{lhs} {neg}{rhs}"


def _mangle(body: dict[str, Any]) -> str | None:
    key, value = body["key"], body["value"]
    if "meta" in key and key["meta"]["key"] == "mark":
        target = "meta mark set"
    elif "ct" in key and key["ct"]["key"] in ("mark", "zone"):
        target = f"ct {key['ct']['key']} set"
    else:
        return None
    if isinstance(value, dict) and "meta" in value and value["meta"]["key"] == "mark":
        return f"{target} mark"
    if isinstance(value, dict) and "ct" in value and value["ct"]["key"] == "mark":
        return f"{target} ct mark"
    if isinstance(value, dict) and "|" in value:  # `ct mark set ct mark & MASK | BITS`
        masked, bits = value["|"]
        if isinstance(masked, dict) and "&" in masked and isinstance(bits, int):
            base, mask = masked["&"]
            if isinstance(base, dict) and base.get("ct", {}).get("key") == "mark" and isinstance(mask, int):
                return f"{target} ct mark & {hex(mask)} | {hex(bits)}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{target} {value}"
    return None


# ----------------------------------------------------------------- canonical comparison key
def nft_key(rule: NftRule) -> NftKey:
    """Identity of a rule for comparing built and live rules (see module doc)."""
    matches = [_canon(m) for m in rule.matches]
    implied = {m.split(" ", 1)[0] for m in matches if m.startswith(("tcp ", "udp "))}
    matches = [m for m in matches if not (m.startswith("meta l4proto ") and m.split()[-1] in implied)]
    return rule.table, rule.chain, tuple(matches), tuple(_canon(a) for a in rule.action)


def _canon(token: str) -> str:
    if token.startswith(UNSUPPORTED):
        return token
    words = token.split()
    if "&" in words or "and" in words or "|" in words:
        return _canon_masked(words)
    if words[0] == "meta" and len(words) > 1 and words[1] in ("skuid", "skgid"):
        words = words[1:]  # the builder writes both `skuid` and `meta skuid`
    if words[:2] == ["ct", "state"]:
        neg = ["!="] if words[2] == "!=" else []
        values = sorted(words[-1].split(","))
        return " ".join(["ct", "state", *neg, ",".join(values)])
    if words[0] in ("ip", "ip6") and len(words) > 2 and words[1] in ("saddr", "daddr"):
        words[-1] = _cidr(words[-1])
    if words[0] in ("iifname", "oifname"):
        words[-1] = words[-1].strip('"')
    return " ".join(words)


def _canon_masked(words: list[str]) -> str:
    """Mark arithmetic in one spelling: `meta mark and 0xfff != 0x539` == `mark & 0xfff != 1337`."""
    out: list[str] = []
    for i, word in enumerate(words):
        if (word == "meta" and i + 1 < len(words) and words[i + 1] == "mark") or word == "==":
            continue  # `meta mark` is `mark`; the kernel prints equality without `==`
        if word == "and":
            word = "&"
        try:
            word = str(int(word, 0))
        except ValueError:
            pass
        out.append(word)
    # `x & M | B` sets B's bits anyway: nft stores and lists the mask as M | B.
    for i in range(len(out) - 3):
        if out[i] == "&" and out[i + 2] == "|" and out[i + 1].isdigit() and out[i + 3].isdigit():
            out[i + 1] = str(int(out[i + 1]) | int(out[i + 3]))
    return " ".join(out)


def _cidr(value: str) -> str:
    try:
        return ipaddress.ip_network(value, strict=False).with_prefixlen
    except ValueError:
        return value
