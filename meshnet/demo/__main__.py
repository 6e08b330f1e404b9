"""`python -m meshnet.demo` (the README's `make demo`): watch a pod's traffic land on a sidecar, for real.

Creates a throwaway pod namespace and a peer namespace joined by a veth, starts a fake sidecar
(uid 1337, listening on 15001/15006) in the pod and a server in the peer, applies the sidecar
injector's default Istio rules with the applier, then shows one outbound and one inbound
connection landing on the sidecar with their original destinations. Everything it created is
removed at the end, whatever happened. Needs root; never touches the host's own rules.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshnet.apply.netns import Netns
from meshnet.errors import MeshnetError

PROXY_UID = 1337
OUTBOUND_PORT, INBOUND_PORT = 15001, 15006
PEER_PORT, APP_PORT = 8080, 9080
POD_IP, PEER_IP = "10.244.0.2", "10.244.0.1"  # private to the demo's namespaces
INJECTOR_FLAGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                  "-b", "*", "-d", "15090,15021,15020"]  # fmt: skip
# uid 1337 cannot exec the venv's interpreter under /root: the servers run on the system python.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
SERVER_SOURCE = Path(__file__).with_name("landing.py")


class DemoError(Exception):
    """The demo's own plumbing failed (not a meshnet bug)."""


def say(text: str = "") -> None:
    print(text, flush=True)


def ip(*args: str) -> None:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        raise DemoError(f"ip {' '.join(args)}: {cp.stderr.strip()}")


class Demo:
    def __init__(self) -> None:
        self.prefix = f"mn-demo-{secrets.token_hex(4)}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pod: Netns | None = None

    # ------------------------------------------------------------------ setup
    def namespace(self, role: str) -> Netns:
        name = f"{self.prefix}-{role}"
        self.names.append(name)  # before creating it: a half-made namespace is removed too
        ip("netns", "add", name)
        return Netns.resolve(name)

    def build(self) -> tuple[Netns, Netns]:
        pod = self.pod = self.namespace("pod")
        peer = self.namespace("peer")
        # Both veth ends are created inside the namespaces: the host never sees them.
        ip("-n", pod.label, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer.label)
        for ns, addr in ((pod, POD_IP), (peer, PEER_IP)):
            for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{addr}/24", "dev", "eth0"],
                        ["link", "set", "eth0", "up"]):  # fmt: skip
                ip("-n", ns.label, *cmd)
        return pod, peer

    def server(self, ns: Netns, name: str, ports: list[int], uid: int = 0) -> None:
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid else []
        argv = [*drop, PYTHON, "-I", "-S", "-c", SERVER_SOURCE.read_text(), name, ",".join(map(str, ports))]
        proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline().strip() != b"READY":
            proc.wait(5)
            raise DemoError(f"{name} server did not start: {proc.stderr.read().decode().strip()}")

    # ------------------------------------------------------------------ the show
    def run(self) -> None:
        from meshnet.apply.applier import apply_spec
        from meshnet.spec.flags import parse_istio_args

        say("meshnet demo: a pod's traffic intercepted for a sidecar, in throwaway namespaces")
        pod, peer = self.build()
        self.server(pod, "sidecar", [OUTBOUND_PORT, INBOUND_PORT], uid=PROXY_UID)
        self.server(peer, "peer", [PEER_PORT])
        say(f"  pod   {pod.label:<24} {POD_IP}   fake sidecar: uid {PROXY_UID} on :{OUTBOUND_PORT} "
            f"(outbound) and :{INBOUND_PORT} (inbound)")  # fmt: skip
        say(f"  peer  {peer.label:<24} {PEER_IP}   a server on :{PEER_PORT}")
        say()

        spec, _ = parse_istio_args(INJECTOR_FLAGS, env={})
        say(f"1. apply the sidecar injector's default rules: istio-iptables {' '.join(_quote(INJECTOR_FLAGS))}")
        t0 = time.perf_counter()
        result = apply_spec(pod, spec)
        ms = (time.perf_counter() - t0) * 1000
        say(f"   applied with backend {result.backend} in {ms:.0f} ms; the IPv4 rules:")
        for line in _rules_text(spec, result.backend):
            say(f"     {line}")
        say()

        say(f"2. an app in the pod (uid 0, not the sidecar's {PROXY_UID}) dials the peer: {PEER_IP}:{PEER_PORT}")
        self.report(_ask(pod, PEER_IP, PEER_PORT), OUTBOUND_PORT, (PEER_IP, PEER_PORT))
        say(f"3. the peer dials the app in the pod: {POD_IP}:{APP_PORT}")
        self.report(_ask(peer, POD_IP, APP_PORT), INBOUND_PORT, (POD_IP, APP_PORT))

    def report(self, reply: dict[str, Any], port: int, meant: tuple[str, int]) -> None:
        od = reply.get("orig_dst")
        where = f"{reply.get('name')} :{reply.get('listener_port')}"
        if reply.get("name") == "sidecar" and reply.get("listener_port") == port and od == list(meant):
            say(f"   -> landed on the sidecar at :{port}, original destination {od[0]}:{od[1]} (SO_ORIGINAL_DST)")
            return
        raise DemoError(f"not intercepted as expected: landed on {where}, original destination {od}")

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop our servers (by PID), remove the rules, delete our namespaces; report what is left."""
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.pod is not None:
            from meshnet.apply.applier import cleanup

            try:
                cleanup(self.pod)
            except MeshnetError as e:  # the namespace is deleted next anyway
                say(f"   (rule cleanup: {e})")
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        left = [n for n in self.names if os.path.exists(f"/run/netns/{n}")]
        if left:
            say(f"4. cleanup FAILED: still present: {', '.join(left)} (remove with: ip netns del NAME)")
        elif self.names:
            say(
                f"4. cleaned up: servers stopped, rules removed, {' and '.join(self.names)} deleted "
                "(gone from `ip netns list`)"
            )


def _quote(args: list[str]) -> list[str]:
    return [a if a and "*" not in a else f"'{a}'" for a in args]


def _rules_text(spec: Any, backend: str) -> list[str]:
    """The IPv4 rules just applied, without declarations: what an operator would read."""
    if backend == "nftables":
        from meshnet.plan.nft_builder import build_nft
        from meshnet.plan.render_nft import render_nft

        lines = render_nft(build_nft(spec)).splitlines()
        return [ln.removeprefix("add rule inet ") for ln in lines if ln.startswith(("add rule", "insert rule"))]
    from meshnet.plan.istio_builder import build_iptables
    from meshnet.plan.render_restore import render_family

    lines = render_family(build_iptables(spec), 4).splitlines()
    return [ln for ln in lines if not ln.startswith("-N") and ln != "COMMIT"]


def _ask(ns: Netns, ip_addr: str, port: int) -> dict[str, Any]:
    """One TCP connection from inside ``ns`` (this process, uid 0: an app, not the proxy)."""
    with ns.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((ip_addr, port))
            data = s.makefile("rb").readline()
        except OSError as e:
            raise DemoError(f"connection to {ip_addr}:{port} failed: {e}") from None
    return json.loads(data)


def main() -> int:
    if os.geteuid() != 0:
        print("meshnet demo: needs root (it creates network namespaces): run `sudo make demo`", file=sys.stderr)
        return 1
    demo = Demo()
    try:
        demo.run()
        return 0
    except (DemoError, MeshnetError) as e:
        print(f"meshnet demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
