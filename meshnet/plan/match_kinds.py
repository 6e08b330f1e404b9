"""One table per match kind: everything meshnet knows about a kind of iptables match, in one class.

A `Match(kind, value, negated)` of the rule model names its kind by a string; `KINDS[kind]` is the
entry that says, for that kind:
- `tokens`: how it is written in iptables-restore text (Istio's spelling);
- `core` / `options` / `arity` / `parse_value`: how iptables-save prints it back (the core option,
  or the `-m MODULE --option` pairs, and their argument count), read by meshnet.state.parse_save;
- `canonical`: the value the kernel stores, so a rule written by meshnet compares equal to the
  rule iptables-save prints (Rule.key());
- `matches`: how `meshnet explain` evaluates it against a packet (three-valued: raises Uncertain
  when the packet does not tell);
- `iptc_attr` / `iptc_param` / `to_iptc`: how the iptc backend (python-iptables) writes it.
Adding a kind is one class here plus its entry in KINDS; the renderer, the parser, compare and
explain all read it from this table (tests/unit/test_match_kinds.py checks every entry round-trips).

The import rule: this module is on the pod-start path (`meshnet istio-iptables` renders through
model.py), so it imports nothing at module level and uses plain classes: no typing, dataclasses,
enum or re (tests/e2e/test_startup_budget.py). What only comparison or explain needs
(ipaddress, pwd/grp, meshnet.diagnose.explain.values) is imported inside the method that uses it,
so those costs are paid only by the commands that compare or explain.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs ~4 ms at start-up; only type checkers need it
if TYPE_CHECKING:
    from typing import Any

    from meshnet.diagnose.explain.packet import Packet

# Hooks a match is evaluated in (explain walks OUTPUT for local packets, PREROUTING for arriving ones).
OUTPUT, PREROUTING = "OUTPUT", "PREROUTING"
# Kind names of the parts of live rules meshnet does not model, kept as the exact text iptables-save
# printed: OPAQUE is a match (or core option) whose effect is unknown; COMMENT never changes what matches.
OPAQUE, COMMENT = "opaque", "comment"


def _neg(negated: bool) -> list[str]:
    return ["!"] if negated else []


def _uncertain(reason: str) -> Exception:
    from meshnet.diagnose.explain.values import Uncertain  # explain only

    return Uncertain(reason)


class MatchKind:
    """One kind of match. Subclasses override what differs; the defaults describe a `-m` option."""

    name: str
    module: str = ""  # the `-m MODULE` that restore text loads for it ("" = a core option)
    option: str = ""  # the option restore text writes
    core: tuple[str, ...] = ()  # core options iptables-save prints for it (no `-m`)
    options: tuple[tuple[str, str], ...] = ()  # (module, option) pairs iptables-save prints for it
    arity: int = 1  # arguments of the option in iptables-save output
    implied: bool = False  # adds nothing to what matches (a bare `-m tcp`): not part of a rule's identity
    port: bool = False  # an option of the protocol's own module (`-p tcp` loads it)
    iptc_attr: str = ""  # python-iptables: the Rule attribute of a core option
    iptc_param: tuple[str, str] = ("", "")  # python-iptables: (match module, its parameter); "" = the protocol's

    def __init__(self, name: str, option: str = "", module: str = "") -> None:
        self.name, self.option, self.module = name, option, module

    def tokens(self, value: str, negated: bool) -> list[str]:
        if self.module:
            return ["-m", self.module, *_neg(negated), self.option, value]
        return [*_neg(negated), self.option, value]

    def parse_value(self, args: list[str]) -> str | None:
        """The model's value from the option's arguments as iptables-save printed them; None if not modelled."""
        return " ".join(args) if len(args) == self.arity else None

    def canonical(self, value: str) -> str:
        return value

    def to_iptc(self, rule: Any, value: str, negated: bool, proto: str, ports: bool) -> None:
        """Set this match on a python-iptables Rule (`proto`: the rule's protocol; `ports`: it has a port match)."""
        text = f"!{value}" if negated else value
        if self.iptc_attr:
            setattr(rule, self.iptc_attr, text)
            return
        module, param = self.iptc_param
        if not param:
            raise ValueError(f"unsupported match {self.name!r}")
        setattr(rule.create_match(module or proto), param, text)

    def matches(self, value: str, negated: bool, packet: Packet, hook: str) -> bool:
        """Does this match hold for the packet at `hook`? Raises Uncertain when it cannot be known."""
        return self.test(value, packet, hook) != negated

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        raise _uncertain(f"match {self.name} is not evaluated")


class Verbatim(MatchKind):
    """OPAQUE and COMMENT: the value is the exact text iptables-save printed (`!` and quoting included)."""

    def tokens(self, value: str, negated: bool) -> list[str]:
        return [value]

    def parse_value(self, args: list[str]) -> str | None:
        return None  # built by the parser from the line's text, never from one option

    def matches(self, value: str, negated: bool, packet: Packet, hook: str) -> bool:
        if self.name == OPAQUE:
            raise _uncertain(f"match {value!r} is not evaluated")
        return True  # a comment never changes what matches


class Proto(MatchKind):
    core = ("-p", "--protocol")
    iptc_attr = "protocol"

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        return value in (packet.proto, "all", {"tcp": "6", "udp": "17"}[packet.proto])


class Address(MatchKind):
    """-s / -d: an address or a network; the kernel prints it masked, with its prefix length."""

    def __init__(self, name: str, option: str, long: str) -> None:
        super().__init__(name, option)
        self.core = (option, long)
        self.iptc_attr = name

    def canonical(self, value: str) -> str:
        import ipaddress  # lazy: only comparisons of live rules need it

        try:
            if "/" in value:
                return ipaddress.ip_network(value, strict=False).with_prefixlen
            addr = ipaddress.ip_address(value)
            return f"{addr}/{addr.max_prefixlen}"
        except ValueError:
            return value

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        from meshnet.diagnose.explain.values import in_cidr

        return bool(in_cidr(value, packet.src if self.name == "src" else packet.dst))


class Interface(MatchKind):
    """-i / -o: a name, or a prefix ending in `+`."""

    def __init__(self, name: str, option: str, long: str) -> None:
        super().__init__(name, option)
        self.core = (option, long)
        self.iptc_attr = f"{name}_interface"

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        from meshnet.diagnose.explain.values import iface_matches

        if self.name == "in":  # a locally generated packet has no input interface
            return iface_matches(value, packet.iif if hook == PREROUTING else None)
        return iface_matches(value, packet.oif)


class Port(MatchKind):
    """--dport / --sport: loaded by `-p tcp|udp` in restore text; iptables-save adds `-m tcp`."""

    port = True

    def __init__(self, name: str, option: str, long: str) -> None:
        super().__init__(name, option)
        self.options = tuple((mod, opt) for mod in ("tcp", "udp", "") for opt in (option, long))
        self.iptc_param = ("", name)

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        from meshnet.diagnose.explain.values import in_port_list

        return in_port_list(value, packet.dport if self.name == "dport" else packet.sport, ":")


class Multiport(MatchKind):
    options = (("multiport", "--dports"), ("multiport", "--destination-ports"))
    iptc_param = ("multiport", "dports")

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        from meshnet.diagnose.explain.values import in_port_list

        return in_port_list(value, packet.dport, ":")


class Owner(MatchKind):
    """--uid-owner / --gid-owner: a name or an id (or a range); the kernel stores and prints ids."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"--{name}-owner", "owner")
        self.options = (("owner", self.option),)
        self.iptc_param = ("owner", f"{name}_owner")

    def canonical(self, value: str) -> str:
        if value.isdigit():
            return value
        import grp
        import pwd

        try:
            if self.name == "uid":
                return str(pwd.getpwnam(value).pw_uid)
            return str(grp.getgrnam(value).gr_gid)
        except KeyError:
            return value

    def matches(self, value: str, negated: bool, packet: Packet, hook: str) -> bool:
        if hook != OUTPUT:
            return False  # no local socket on arriving packets: the owner match never matches, negated or not
        return super().matches(value, negated, packet, hook)

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        from meshnet.diagnose.explain.values import owner_matches

        return owner_matches(value, packet.uid if self.name == "uid" else packet.gid, self.name)


class Ctstate(MatchKind):
    options = (("conntrack", "--ctstate"),)
    iptc_param = ("conntrack", "ctstate")

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        return packet.state in {s.strip().upper() for s in value.split(",")}


class Mark(MatchKind):
    """-m mark / -m connmark --mark: Istio writes decimal (sidecar) or hex (ambient); the kernel prints hex."""

    def __init__(self, name: str, module: str) -> None:
        super().__init__(name, "--mark", module)
        self.options = ((module, "--mark"),)
        self.iptc_param = (module, "mark")

    def parse_value(self, args: list[str]) -> str | None:
        """'0x539' -> '1337'; '0x539/0xffffffff' -> '1337/0xffffffff' (mask kept in hex, like Istio)."""
        if len(args) != 1:
            return None
        val, sep, mask = args[0].partition("/")
        try:
            number = str(int(val, 0))
        except ValueError:
            return None
        return f"{number}/{mask}" if sep else number

    def canonical(self, value: str) -> str:
        val, sep, mask = value.partition("/")
        try:
            number = str(int(val, 0))
            return f"{number}/0x{int(mask, 0):x}" if sep else number
        except ValueError:
            return value

    def test(self, value: str, packet: Packet, hook: str) -> bool:
        from meshnet.diagnose.explain.values import mark_matches

        return mark_matches(value, packet.mark if self.name == "mark" else packet.ctmark)


class Module(MatchKind):
    """A bare `-m tcp` / `-m udp` (Istio's ambient rules write them); the value is the module."""

    implied = True

    def tokens(self, value: str, negated: bool) -> list[str]:
        return ["-m", value]

    def matches(self, value: str, negated: bool, packet: Packet, hook: str) -> bool:
        return True  # `-p tcp` decides; the module only loads the port options

    def to_iptc(self, rule: Any, value: str, negated: bool, proto: str, ports: bool) -> None:
        if not ports:  # a port match has loaded it already
            rule.create_match(value)


class SocketExists(MatchKind):
    options = (("owner", "--socket-exists"),)
    arity = 0

    def tokens(self, value: str, negated: bool) -> list[str]:
        return ["-m", "owner", *_neg(negated), "--socket-exists"]

    def to_iptc(self, rule: Any, value: str, negated: bool, proto: str, ports: bool) -> None:
        rule.create_match("owner").socket_exists = "!" if negated else ""


class MatchSet(MatchKind):
    """-m set --match-set NAME FLAGS; the value is "NAME FLAGS", e.g. "istio-inpod-probes-v4 dst"."""

    options = (("set", "--match-set"),)
    arity = 2

    def tokens(self, value: str, negated: bool) -> list[str]:
        return ["-m", "set", *_neg(negated), "--match-set", *value.split(" ")]

    def to_iptc(self, rule: Any, value: str, negated: bool, proto: str, ports: bool) -> None:
        name, *flags = value.split()
        rule.create_match("set").match_set = [f"!{name}" if negated else name, *flags]


_ALL: tuple[MatchKind, ...] = (
    Proto("proto", "-p"),
    Address("src", "-s", "--source"),
    Address("dst", "-d", "--destination"),
    Interface("in", "-i", "--in-interface"),
    Interface("out", "-o", "--out-interface"),
    Port("dport", "--dport", "--destination-port"),
    Port("sport", "--sport", "--source-port"),
    Multiport("dports", "--dports", "multiport"),
    Owner("uid"),
    Owner("gid"),
    Ctstate("ctstate", "--ctstate", "conntrack"),
    Mark("mark", "mark"),
    Mark("connmark", "connmark"),
    Module("module"),
    SocketExists("socket_exists"),
    MatchSet("set"),
    Verbatim(OPAQUE),
    Verbatim(COMMENT),
)
KINDS: dict[str, MatchKind] = {k.name: k for k in _ALL}
# The kinds a builder may emit (every kind but the verbatim parts of foreign rules).
MATCH_KINDS = tuple(k.name for k in _ALL if not isinstance(k, Verbatim))


def kind_of(name: str) -> MatchKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown match kind {name!r}") from None
