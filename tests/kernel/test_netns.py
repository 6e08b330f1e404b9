"""meshnet.apply.netns against real namespaces (root)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from harness.topology import Topology, connect, ns_names

from meshnet.apply.netns import Netns, NetnsError

pytestmark = pytest.mark.netns


def thread_ns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_resolve_by_name_path_and_pid(topology: Topology) -> None:
    name = topology.pod.label
    by_name = Netns.resolve(name)
    assert by_name.path == f"/run/netns/{name}" and by_name.label == name
    by_path = Netns.resolve(f"/run/netns/{name}")
    assert by_path.inode == by_name.inode

    proc = topology.spawn(topology.pod, ["sleep", "30"])
    deadline = time.monotonic() + 3
    by_pid = Netns.resolve(pid=proc.pid)
    # nsenter execs after setns, so the pid shows the pod only once it has run.
    while by_pid.inode != by_name.inode and time.monotonic() < deadline:
        time.sleep(0.005)
    assert by_pid.path == f"/proc/{proc.pid}/ns/net" and by_pid.label == f"pid {proc.pid}"
    assert by_pid.inode == by_name.inode
    assert by_name.inode != Netns.resolve().inode


def test_current_namespace() -> None:
    cur = Netns.resolve()
    assert cur.path == "/proc/self/ns/net"
    assert cur.is_current()
    assert cur.inode == thread_ns()
    assert cur.argv(["true"]) == ["true"]
    assert cur.run(["true"]).returncode == 0


def test_argv_wraps_with_nsenter(topology: Topology) -> None:
    assert not topology.pod.is_current()
    assert topology.pod.argv(["ip", "link"]) == [
        "nsenter",
        f"--net={topology.pod.path}",
        "--",
        "ip",
        "link",
    ]


def test_missing_namespace_is_an_error_and_creates_nothing() -> None:
    before = ns_names()
    name = f"mn-missing-{os.getpid()}"
    with pytest.raises(NetnsError, match=rf"network namespace '{name}' not found \(/run/netns/{name}\)"):
        Netns.resolve(name)
    with pytest.raises(NetnsError, match="not found"):
        Netns.resolve(f"/run/netns/{name}")
    ghost = Netns(f"/run/netns/{name}", name)  # constructed without resolve(): every entry point refuses
    for call in (
        lambda: ghost.run(["true"]),
        lambda: ghost.socket(socket.AF_INET, socket.SOCK_STREAM),
        lambda: ghost.read_proc_net("dev"),
        lambda: ghost.sysctl("net.ipv4.ip_forward"),
        lambda: ghost.ipr(),
    ):
        with pytest.raises(NetnsError):
            call()
    assert not os.path.exists(f"/run/netns/{name}")
    assert name not in ns_names() and name not in before


def test_invalid_inputs() -> None:
    with pytest.raises(NetnsError, match="process 99999999 not found"):
        Netns.resolve(pid=99999999)
    with pytest.raises(NetnsError, match="not a namespace file"):
        Netns.resolve("/etc/hostname")
    with pytest.raises(NetnsError, match="not a network namespace"):
        Netns.resolve("/proc/self/ns/uts")
    with pytest.raises(NetnsError):
        Netns.resolve("x", pid=1)
    for bad in ("", ".", ".."):
        with pytest.raises(NetnsError):
            Netns.resolve(bad)


def test_socket_is_created_in_the_namespace(topology: Topology) -> None:
    before = thread_ns()
    pod_ip = topology.pod_ip4
    s = topology.pod.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.bind((pod_ip, 0))  # only the pod owns this address
        s.listen(1)
        port = s.getsockname()[1]
        # The fd works from this (never switched) thread: the peer reaches it through the veth.
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(connect(topology.peer, pod_ip, port)))
        t.start()
        s.settimeout(5)
        conn, peer = s.accept()
        with conn:
            assert peer[0] == topology.peer_ip4
            conn.recv(100)
            conn.sendall(b'{"name": "raw"}\n')
        t.join(10)
        assert result.get("name") == "raw", result
    assert thread_ns() == before

    host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    if f" {pod_ip}/" not in host_addrs:
        with Netns.resolve().socket(socket.AF_INET, socket.SOCK_STREAM) as h:
            with pytest.raises(OSError) as ei:
                h.bind((pod_ip, 0))
            assert ei.value.errno == errno.EADDRNOTAVAIL

    s6 = topology.pod.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with s6:
        s6.bind((topology.pod_ip6, 0))


def test_socket_errors_propagate(topology: Topology) -> None:
    with pytest.raises(OSError):
        topology.pod.socket(12345, socket.SOCK_STREAM)


def test_read_proc_net(topology: Topology) -> None:
    before = thread_ns()
    dev = topology.pod.read_proc_net("dev")
    names = {line.split(":")[0].strip() for line in dev.splitlines()[2:]}
    assert names == {"lo", "eth0"}
    assert topology.pod.read_proc_net("netstat").startswith("TcpExt:")
    assert "eth0" in topology.pod.read_proc_net("if_inet6")
    assert thread_ns() == before
    with pytest.raises(FileNotFoundError):
        topology.pod.read_proc_net("no_such_entry")
    with pytest.raises(ValueError):
        topology.pod.read_proc_net("../mounts")


def test_read_proc_net_creates_no_tables(topology: Topology) -> None:
    try:
        topology.pod.read_proc_net("ip_tables_names")
    except FileNotFoundError:
        pass
    assert topology.pod.run(["nft", "list", "ruleset"]).stdout.strip() == ""
    try:
        assert topology.pod.read_proc_net("ip_tables_names").strip() == ""
    except FileNotFoundError:
        pass


def test_sysctl_is_per_namespace(topology: Topology) -> None:
    host = open("/proc/sys/net/ipv4/tcp_fin_timeout").read().strip()
    value = "37" if host != "37" else "38"
    topology.pod.run(["sysctl", "-q", "-w", f"net.ipv4.tcp_fin_timeout={value}"])
    assert topology.pod.sysctl("net.ipv4.tcp_fin_timeout") == value
    assert topology.pod.sysctl("net/ipv4/tcp_fin_timeout") == value
    assert topology.peer.sysctl("net.ipv4.tcp_fin_timeout") != value or host == value
    assert Netns.resolve().sysctl("net.ipv4.tcp_fin_timeout") == host
    assert open("/proc/sys/net/ipv4/tcp_fin_timeout").read().strip() == host
    assert topology.pod.sysctl("net.ipv6.conf.eth0.disable_ipv6") == "0"
    with pytest.raises(NetnsError, match="not found"):
        topology.pod.sysctl("net.ipv4.no_such_key")


def test_run(topology: Topology) -> None:
    out = topology.pod.run(["ip", "-o", "link", "show"]).stdout
    assert "eth0" in out
    assert topology.pod.run(["cat"], input="abc\n").stdout == "abc\n"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MN_X": "42"}
    assert topology.pod.run(["sh", "-c", "echo $MN_X"], env=env).stdout == "42\n"
    with pytest.raises(NetnsError) as ei:
        topology.pod.run(["ip", "link", "show", "nope0"])
    msg = str(ei.value)
    assert topology.pod.label in msg and "ip link show nope0" in msg
    assert msg.endswith('Device "nope0" does not exist.')
    cp = topology.pod.run(["sh", "-c", "echo err >&2; exit 3"], check=False)
    assert cp.returncode == 3 and cp.stderr == "err\n"
    with pytest.raises(NetnsError, match="timed out"):
        topology.pod.run(["sleep", "5"], timeout=0.2)
    with pytest.raises(NetnsError, match="executable not found"):  # as in the current namespace
        topology.pod.run(["/nonexistent/binary"])
    with pytest.raises(NetnsError, match="executable not found"):
        topology.pod.run(["/nonexistent/binary"], check=False)  # nsenter's failure is never the tool's


def test_popen(topology: Topology) -> None:
    proc = topology.pod.popen(["ip", "-o", "link"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=10)
    assert "eth0" in out


def test_ipr(topology: Topology) -> None:
    with topology.pod.ipr() as ipr:
        names = {link.get("ifname") for link in ipr.get_links()}
    assert names == {"lo", "eth0"}


def test_import_is_cheap() -> None:
    code = "import sys, meshnet.apply.netns; print(sorted(m for m in ('pyroute2', 'ctypes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_current_namespace_is_used_in_place() -> None:
    """No setns thread, no nsenter for the namespace we are in: both need CAP_SYS_ADMIN, which a pod lacks."""
    import threading

    me = Netns.resolve()
    assert me.is_current()
    assert me.call_in(threading.get_ident) == threading.get_ident()  # ran right here, not in a new thread
    assert me.argv(["iptables-nft-save"]) == ["iptables-nft-save"]
    assert "lo:" in me.read_proc_net("dev")
