"""Shared by the fault tests (concurrent writers, kill -9): specs, forked writers, state checks.

Writers run as forked copies of the test process (separate processes, separate lock fds, no
interpreter start-up), so 20 of them into one namespace cost what the writes cost. The CLI
contract (exit code, one line) is checked separately with real `meshnet` processes.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.topology import Topology

from meshnet.apply.applier import spec_for_netns, status
from meshnet.apply.netns import Netns
from meshnet.errors import MeshnetError
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.spec import Spec

REDIRECT = ("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*",
            "-d", "15090,15021,15020")
TPROXY = tuple("TPROXY" if a == "REDIRECT" else a for a in REDIRECT)
ALL_BACKENDS = ("iptables-legacy", "iptables-nft", "nftables", "iptc", "auto")


def make_spec(flags: Sequence[str], ns: Netns) -> Spec:
    spec, _ = parse_istio_args(list(flags), {})
    return spec_for_netns(spec.with_changes(dual_stack=True), ns)


@dataclass(frozen=True)
class Outcome:
    code: int  # 0 ok, 1 MeshnetError (a clear line), 3 anything else (a bug)
    line: str
    finished: float  # CLOCK_MONOTONIC, comparable across processes: the lock makes it the commit order


def run_forked(jobs: Sequence[Callable[[], str]], timeout: float = 120.0) -> list[Outcome]:
    """Start every job in its own forked process, release them at once, collect their outcomes."""
    go_r, go_w = os.pipe()
    children: list[tuple[int, int]] = []
    for job in jobs:
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: wait for the start signal, run, report one JSON line, exit
            os.close(out_r)
            os.close(go_w)
            select.select([go_r], [], [])
            try:
                code, line = 0, job()
            except MeshnetError as exc:
                code, line = 1, str(exc)
            except BaseException:
                code, line = 3, traceback.format_exc()
            os.write(out_w, json.dumps({"code": code, "line": line, "t": time.monotonic()}).encode())
            os._exit(0)
        os.close(out_w)
        children.append((pid, out_r))
    os.close(go_r)
    os.write(go_w, b"go")
    os.close(go_w)
    outcomes = []
    deadline = time.monotonic() + timeout
    for pid, out_r in children:
        chunks = []
        while True:
            ready, _, _ = select.select([out_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                for p, _ in children:
                    _kill(p)
                raise AssertionError(f"writer {pid} did not finish in {timeout:g}s")
            data = os.read(out_r, 65536)
            if not data:
                break
            chunks.append(data)
        os.close(out_r)
        os.waitpid(pid, 0)
        doc = json.loads(b"".join(chunks) or b'{"code": 3, "line": "no report", "t": 0}')
        outcomes.append(Outcome(doc["code"], doc["line"], doc["t"]))
    return outcomes


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def fwmark_rules(ns: Netns) -> dict[str, list[str]]:
    """`ip rule` lines that match on a mark, per family."""
    return {fam: [ln.strip() for ln in ns.run(["ip", fam, "rule"]).stdout.splitlines() if "fwmark" in ln]
            for fam in ("-4", "-6")}


def local_routes(ns: Netns) -> dict[str, list[str]]:
    return {fam: [ln.strip() for ln in ns.run(["ip", fam, "route", "show", "table", "all"]).stdout.splitlines()
                  if ln.startswith("local default")] for fam in ("-4", "-6")}


def assert_exactly(ns: Netns, spec: Spec | None, backend: str) -> None:
    """The namespace holds exactly `spec` (or nothing), complete in both families, with its routing."""
    st = status(ns, spec)
    marks = fwmark_rules(ns)
    if spec is None:
        assert st.backends == (), st
        assert marks == {"-4": [], "-6": []}, marks
        assert local_routes(ns) == {"-4": [], "-6": []}
        assert not st.passthrough_v6, st
        return
    expected = {"iptc": "iptables-legacy", "auto": "iptables-nft"}.get(backend, backend)
    assert st.backends == (expected,), st
    assert st.drift == (), st.drift
    assert not guardrails_left(ns), "leftover DROP guardrails"
    fams = ("-4", "-6") if spec.enable_ipv6 else ("-4",)
    want = [f"from all fwmark {hex(spec.tproxy_mark)} lookup {spec.tproxy_route_table}"] \
        if spec.tproxy and spec.inbound_enabled else []
    for fam in ("-4", "-6"):
        got = [ln.split(":", 1)[1].strip() for ln in marks[fam]]
        assert got == (want if fam in fams else []), (fam, marks)


def guardrails_left(ns: Netns) -> list[str]:
    """Istio's DROP guardrails in either iptables variant, either family."""
    from meshnet.apply.backends.guardrails import find_guardrails
    from meshnet.apply.backends.xtables import Xtables

    found = []
    for variant in ("legacy", "nft"):
        xt = Xtables(variant)
        for fam in (4, 6):
            found += [f"{xt.binary(fam, '')}: {line}" for line in find_guardrails(xt.save(ns, fam))]
    return found


def _talk(sock: socket.socket, dst: tuple[str, int], timeout: float = 3.0) -> str:
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(dst)
            sock.sendall(b"hi\n")
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            return f"error: {type(exc).__name__}"
    try:
        return str(json.loads(buf)["name"])
    except ValueError:
        return f"error: bad reply {buf[:60]!r}"


def traffic(topo: Topology, timeout: float = 3.0) -> dict[str, str]:
    """Where one connection per direction and family lands (name of the landing server)."""
    out = {}
    for fam, af, pod_ip, peer_ip in ((4, socket.AF_INET, topo.pod_ip4, topo.peer_ip4),
                                     (6, socket.AF_INET6, topo.pod_ip6, topo.peer_ip6)):
        out[f"out{fam}"] = _talk(topo.pod.socket(af, socket.SOCK_STREAM), (str(peer_ip), 8080), timeout)
        out[f"in{fam}"] = _talk(topo.peer.socket(af, socket.SOCK_STREAM), (str(pod_ip), 8080), timeout)
    return out
