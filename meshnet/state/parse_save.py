"""iptables-save / ip6tables-save output (legacy or nft backend) -> RuleSet.

The kernel prints rules back in its own spelling: option order differs, implicit `-m tcp`
appears, marks become hex, MARK becomes `--set-xmark`, TPROXY gains `--on-ip`. This parser
normalises all of that to the builder's (Istio's) spelling so rules compare by `Rule.key()`.

Anything else iptables-save prints is still parsed, never refused: a match module (with all its
options) meshnet does not model is kept as one opaque part holding the exact text of the line;
target options it does not normalise are kept as the words printed (or, when quoted, as the exact
text), so the rule prints back byte for byte and compares verbatim. A foreign rule
(`--tcp-flags ALL NONE`, `-m string --string "a b"`, `-j LOG --log-prefix "x "`) therefore never
stops reading, diffing or cleaning a namespace; explain says it cannot evaluate such a part.
"""

from __future__ import annotations

from meshnet.errors import MeshnetError
from meshnet.plan.match_kinds import COMMENT, KINDS, OPAQUE, MatchKind
from meshnet.plan.model import Family, Match, Rule, RuleSet, Target

FULL_MASK = 0xFFFFFFFF
# `# Table `nat' is incompatible, use 'nft' tool.`: iptables-nft-save skips a table holding rules
# written by nft that it cannot show (the table's rules are then unknown).
INCOMPATIBLE = "is incompatible"

# How iptables-save prints each match kind comes from the kinds' table (meshnet.plan.match_kinds):
# core option -> kind, and (module, option) -> kind for the `-m` matches the model knows.
_CORE = {opt: k.name for k in KINDS.values() for opt in k.core}
_CORE_FLAGS = frozenset({"-f", "--fragment"})  # IPv4 fragment match: no argument, not modelled
_MATCH = frozenset({"-m", "--match"})
_JUMP = frozenset({"-j", "--jump", "-g", "--goto"})
_ENDS_BLOCK = _MATCH | _JUMP | frozenset(_CORE) | _CORE_FLAGS
# Options whose one argument is free text: the next word is the argument even when it starts with
# `-` (xtables prints such a value unquoted: `--comment -x`), as getopt would take it.
_TEXT_ARG = frozenset({"--comment", "--log-prefix", "--nflog-prefix", "--string", "--hex-string", "--name",
                       "--hashlimit-name", "--helper", "--physdev-in", "--physdev-out", "--match-set",
                       "--add-set", "--del-set", "--map-set", "--label", "--path", "--selctx"})
_MODELED: dict[tuple[str, str], MatchKind] = {pair: k for k in KINDS.values() for pair in k.options}


class ParseError(MeshnetError):
    pass


class Token:
    """One shell word of a rule line: its unquoted value and where it sits in the line."""

    __slots__ = ("value", "start", "end")

    def __init__(self, value: str, start: int, end: int) -> None:
        self.value, self.start, self.end = value, start, end

    def __repr__(self) -> str:
        return f"Token({self.value!r})"


def split_words(line: str) -> list[Token]:
    """Split like a POSIX shell (xtables' quoting: `"..."` with `\\"`, `\\\\`, `\\'` escapes).

    Never fails: an unterminated quote runs to the end of the line.
    """
    out: list[Token] = []
    if '"' not in line and "'" not in line and "\\" not in line:  # the common case: plain words
        pos = 0
        for word in line.split():
            start = line.index(word, pos)
            pos = start + len(word)
            out.append(Token(word, start, pos))
        return out
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        start, value = i, []
        while i < n and line[i] not in " \t":
            c = line[i]
            if c == '"':
                i += 1
                while i < n and line[i] != '"':
                    if line[i] == "\\" and i + 1 < n:
                        i += 1
                    value.append(line[i])
                    i += 1
                i += 1
            elif c == "'":
                end = line.find("'", i + 1)
                end = n if end < 0 else end
                value.append(line[i + 1:end])
                i = end + 1
            elif c == "\\" and i + 1 < n:
                value.append(line[i + 1])
                i += 2
            else:
                value.append(c)
                i += 1
        out.append(Token("".join(value), start, min(i, n)))
    return out


def _mark(value: str) -> str:
    """'0x539' -> '1337'; '0x539/0xffffffff' -> '1337/0xffffffff' (mask kept in hex, like Istio)."""
    val, sep, mask = value.partition("/")
    number = str(int(val, 0))
    return f"{number}/{mask}" if sep else number


def _is_option(tok: Token, line: str) -> bool:
    """An option is an unquoted word starting with '-' (a quoted "-x" is a value)."""
    return tok.value.startswith("-") and line[tok.start] == "-" and len(tok.value) > 1


def _options(words: list[Token], line: str) -> list[tuple[bool, str, list[str]]] | None:
    """[(negated, --option, [args])] of one match module or target; None if it is not that shape."""
    out: list[tuple[bool, str, list[str]]] = []
    neg = False
    i = 0
    while i < len(words):
        w = words[i]
        if w.value == "!":
            neg = True
            i += 1
            continue
        if not _is_option(w, line):
            return None
        args: list[str] = []
        i += 1
        if w.value in _TEXT_ARG and i < len(words):
            args.append(words[i].value)
            i += 1
        while i < len(words) and words[i].value != "!" and not _is_option(words[i], line):
            args.append(words[i].value)
            i += 1
        out.append((neg, w.value, args))
        neg = False
    return None if neg else out


def _modeled_matches(module: str, words: list[Token], line: str) -> list[Match] | None:
    """The model's matches for one module block, or None when any part of it is not modelled."""
    opts = _options(words, line)
    if opts == [] and module in ("tcp", "udp"):
        return [Match(KINDS["module"].name, module)]  # a bare `-m tcp` (Istio's ambient rules write it)
    if not opts:
        return None
    out: list[Match] = []
    for neg, opt, args in opts:
        kind = _MODELED.get((module, opt))
        value = kind.parse_value(args) if kind is not None else None
        if kind is None or value is None:
            return None
        out.append(Match(kind.name, value, neg))
    return out


def _full(mask: str) -> bool:
    try:
        return int(mask, 0) == FULL_MASK
    except ValueError:
        return False


def _modeled_target(name: str, opts: list[tuple[bool, str, list[str]]]) -> tuple[str, ...] | None:
    """Normalised args of a target whose options the model knows exactly; None otherwise."""
    if any(neg for neg, _, _ in opts):
        return None
    one = {opt: args[0] for _, opt, args in opts if len(args) == 1}
    flags = [opt for _, opt, args in opts if not args]
    if len(one) + len(flags) != len(opts):
        return None  # repeated options or several arguments
    try:
        if name == "REDIRECT" and not flags and len(one) == 1:
            port = one.get("--to-ports") or one.get("--to-port")
            return ("--to-ports", port) if port else None
        if name == "MARK" and not flags and len(one) == 1:
            value = one.get("--set-mark") or one.get("--set-xmark")
            if value is None:
                return None
            val, _, mask = value.partition("/")
            if not mask or _full(mask):
                return ("--set-mark", str(int(val, 0)))
            return ("--set-xmark", _mark(value))
        if name == "CONNMARK" and len(flags) == 1 and flags[0] in ("--save-mark", "--restore-mark") \
                and set(one) <= {"--nfmask", "--ctmask", "--mask"} and all(_full(m) for m in one.values()):
            return (flags[0],)  # the kernel prints the full default masks Istio never writes
        if name == "TPROXY" and not flags and "--on-port" in one \
                and set(one) <= {"--on-port", "--on-ip", "--tproxy-mark"}:
            val, _, mask = one.get("--tproxy-mark", "0").partition("/")
            out = ["--tproxy-mark", f"{int(val, 0)}/{mask or '0xffffffff'}", "--on-port", one["--on-port"]]
            on_ip = one.get("--on-ip")
            if on_ip and on_ip not in ("0.0.0.0", "::"):
                out += ["--on-ip", on_ip]
            return tuple(out)
        if name == "CT" and not flags and set(one) == {"--zone"}:
            return ("--zone", one["--zone"])
    except ValueError:
        return None
    return None


def _target(name: str, goto: bool, words: list[Token], line: str) -> Target:
    if not words:
        return Target(name, goto=goto)
    opts = _options(words, line)
    args = _modeled_target(name, opts) if opts is not None else None
    if args is not None:
        return Target(name, args, goto=goto)
    raw = line[words[0].start:words[-1].end]
    values = tuple(w.value for w in words)
    if " ".join(values) == raw:  # plain words (Istio's ambient SNAT, CONNMARK --set-xmark): compare as args
        return Target(name, values, goto=goto)
    return Target(name, opaque=raw, goto=goto)  # quoted text (a LOG prefix): kept as printed


def _block_end(words: list[Token], i: int, line: str) -> int:
    """Index just past the options of the match block whose first option is words[i]."""
    while i < len(words):
        w = words[i]
        if w.value in _ENDS_BLOCK and _is_option(w, line):
            return i
        if w.value == "!" and i + 1 < len(words) and words[i + 1].value in _ENDS_BLOCK:
            return i
        if w.value in _TEXT_ARG and _is_option(w, line):
            i += 2  # its argument may look like an option
            continue
        i += 1
    return i


def parse_rule(table: str, tokens: list[str] | list[Token], line: str | None = None) -> Rule:
    """Parse the words after `-A` (chain first). Never raises: unknown parts become opaque.

    `tokens` are Tokens from `split_words(line)`; plain strings (already split) are accepted too,
    with opaque parts then re-joined by spaces.
    """
    if line is None:
        words, line = _as_words([str(t) for t in tokens])
    else:
        words = [t for t in tokens if isinstance(t, Token)]
    chain = words[0].value
    matches: list[Match] = []
    target = Target("")
    neg_at: int | None = None  # index of a pending `!`
    i = 1
    while i < len(words):
        w = words[i]
        tok = w.value
        if tok == "!" and neg_at is None:
            neg_at = i
            i += 1
            continue
        negated = neg_at is not None
        first = neg_at if neg_at is not None else i
        neg_at = None
        if tok in _CORE and _is_option(w, line) and i + 1 < len(words):
            matches.append(Match(_CORE[tok], words[i + 1].value, negated))
            i += 2
        elif tok in _CORE_FLAGS and _is_option(w, line):
            matches.append(Match(OPAQUE, line[words[first].start:w.end]))
            i += 1
        elif tok in _MATCH and _is_option(w, line) and i + 1 < len(words) and not negated:
            module = words[i + 1].value
            end = _block_end(words, i + 2, line)
            matches.extend(_block(module, words[first:end], words[i + 2:end], line))
            i = end
        elif tok in _JUMP and _is_option(w, line) and i + 1 < len(words) and not negated:
            target = _target(words[i + 1].value, tok in ("-g", "--goto"), words[i + 2:], line)
            break
        elif _is_option(w, line) and not tok.startswith("--") or not _is_option(w, line):
            # Not something iptables-save prints: keep the rest of the line as it is.
            matches.append(Match(OPAQUE, line[words[first].start:words[-1].end]))
            break
        else:
            # Options without `-m` (restore text relies on `-p tcp` loading tcp): an implicit block.
            end = _block_end(words, i, line)
            matches.extend(_block("", words[first:end], words[first:end], line))
            i = end
    return Rule(table, chain, tuple(matches), target)


def _block(module: str, whole: list[Token], options: list[Token], line: str) -> list[Match]:
    text = line[whole[0].start:whole[-1].end]
    if module == "comment":
        opts = _options(options, line)
        if opts and all(opt == "--comment" and not neg for neg, opt, _ in opts):
            return [Match(COMMENT, text)]
    modeled = _modeled_matches(module, options, line)
    return modeled if modeled is not None else [Match(OPAQUE, text)]


def _as_words(tokens: list[str]) -> tuple[list[Token], str]:
    """Tokens given as plain strings: lay them out on one line (opaque text is then their join)."""
    words, pos = [], 0
    for t in tokens:
        words.append(Token(t, pos, pos + len(t)))
        pos += len(t) + 1
    return words, " ".join(tokens)


def parse_save(text: str, family: Family) -> RuleSet:
    rs = RuleSet(family)
    table = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            if INCOMPATIBLE in line and "`" in line:
                rs.unreadable.add(line.split("`", 1)[1].split("'", 1)[0])
            continue
        if not line:
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
            words = split_words(line)
            if len(words) < 2:
                raise ParseError(f"line {lineno}: a rule without a chain: {line[:60]!r}")
            if words[0].value == "-I":  # `-I CHAIN [N]`: restore text, not save output
                pos = 1
                if len(words) > 2 and words[2].value.isdigit():
                    pos = int(words[2].value)
                    del words[2]
                rule = parse_rule(table, words[1:], line)
                rs.table(table).chain(rule.chain).rules.insert(pos - 1, rule)
            else:
                rule = parse_rule(table, words[1:], line)
                rs.table(table).chain(rule.chain).rules.append(rule)
        elif line.startswith("-N "):
            rs.table(table).chain(line[3:].strip())
        else:
            raise ParseError(f"line {lineno}: unexpected {line[:60]!r}")
    return rs
