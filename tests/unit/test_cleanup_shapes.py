"""Which builtin-chain rules and marks count as Istio's (unit level; the kernel tests are test_lookalikes.py)."""

from __future__ import annotations

from meshnet.apply.backends.routing import nft_marks
from meshnet.apply.backends.xt_cleanup import istio_marks, plan_removal
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.render_restore import render_family
from meshnet.spec.flags import parse_istio_args
from meshnet.state.parse_save import parse_save

TPROXY = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-c", "eth1"]


def _save(mark: int) -> str:
    """Istio's TPROXY rules with `mark` as iptables-save would list them (tables mangle then nat)."""
    spec, _ = parse_istio_args(TPROXY, {})
    rs = parse_save(render_family(build_iptables(spec.with_changes(tproxy_mark=mark)), 4).replace("* ", "*"), 4)
    out = []
    for name in ("mangle", "nat"):
        table = rs.tables[name]
        out += [f"*{name}", *(f":{c} - [0:0]" for c in table.chains)]
        out += [str(r) for c in table.chains.values() for r in c.rules] + ["COMMIT"]
    return "\n".join(out) + "\n"


def test_the_mark_is_read_from_istios_chains() -> None:
    assert istio_marks([_save(77)]) == {77}
    assert istio_marks(["*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK --set-xmark 0x4d/0xffffffff\n"
                        "COMMIT\n"]) == set()  # a MARK outside Istio's chains says nothing


def test_tproxy_plumbing_goes_only_with_istios_mark() -> None:
    text = _save(77).replace("COMMIT", "-A PREROUTING -p tcp -m mark --mark 0x1 -j CONNMARK --save-mark\n"
                                       "-A OUTPUT -p tcp -m connmark --mark 0x1 -j CONNMARK --restore-mark\nCOMMIT", 1)
    assert text.startswith("*mangle")
    removal = plan_removal(text, 4)
    gone = removal.lines("mangle")
    assert any("PREROUTING" in g for g in gone) and not any("0x1" in g for g in gone)
    deleted = {(c, p) for c, p, _ in removal.deletes["mangle"]}
    mangle = text[:text.index("*nat")]
    kept = [ln for i, ln in enumerate(ln for ln in mangle.splitlines() if ln.startswith("-A PREROUTING"))
            if ("PREROUTING", i + 1) not in deleted]
    assert kept == ["-A PREROUTING -p tcp -m mark --mark 0x1 -j CONNMARK --save-mark"]


def test_lookalikes_without_istio_chains_stay() -> None:
    text = ("*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark\n"
            "-A OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark\nCOMMIT\n"
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -i eth1 -j RETURN\n"
            "-A OUTPUT -o eth1 -j RETURN\nCOMMIT\n")
    assert plan_removal(text, 4, marks=[1337]).empty


def test_an_interface_pair_after_istios_jump_is_not_istios() -> None:
    text = _save(1337)
    nat = text[text.index("*nat"):]
    later = nat.replace("COMMIT", "-A PREROUTING -i eth2 -j RETURN\n-A OUTPUT -o eth2 -j RETURN\nCOMMIT", 1)
    removal = plan_removal(text[:text.index("*nat")] + later, 4)
    lines = removal.lines("nat")
    assert "-D PREROUTING -i eth1 -j RETURN" in lines and "-D OUTPUT -o eth1 -j RETURN" in lines
    assert not any("eth2" in ln for ln in lines)


def test_nft_marks_are_the_tproxy_marks_only() -> None:
    assert nft_marks(["meta mark set 1337", "meta mark set 1338", "ct mark set mark", "meta mark set ct mark"]) \
        == {1337}


def test_with_a_spec_only_its_excluded_interfaces_are_istios() -> None:
    text = _save(1337)  # Istio's rules with -c eth1
    assert "-D PREROUTING -i eth1 -j RETURN" in plan_removal(text, 4, interfaces=("eth1",)).lines("nat")
    # The spec says no interface was excluded: the pair right above Istio's jumps is someone else's.
    assert not any("eth1" in ln for ln in plan_removal(text, 4, interfaces=()).lines("nat"))
