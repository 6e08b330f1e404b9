"""Netns.prefetch_proc_net: one read serves several /proc/net files, identical to direct reads."""

from __future__ import annotations

import pytest
from harness.topology import Topology

from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns
FILES = ("fib_trie", "if_inet6", "ip_tables_names", "ip6_tables_names")


def test_prefetched_content_equals_direct_reads(topology: Topology) -> None:
    pod: Netns = topology.pod
    direct: dict[str, str | None] = {}
    for name in FILES:
        try:
            direct[name] = pod.read_proc_net(name)
        except FileNotFoundError:
            direct[name] = None
    with pod.prefetch_proc_net(FILES):
        for name in FILES:
            if direct[name]:
                assert pod.read_proc_net(name) == direct[name]
            else:  # missing or empty: both mean "none" to every caller
                with pytest.raises(FileNotFoundError):
                    pod.read_proc_net(name)
    assert topology.pod_ip4 in pod.read_proc_net("fib_trie")


def test_snapshot_ends_with_the_context(topology: Topology) -> None:
    pod: Netns = topology.pod
    with pod.prefetch_proc_net(("if_inet6",)):
        before = pod.read_proc_net("if_inet6")
        pod.run(["ip", "addr", "add", "fd00:dead::9/128", "dev", "lo"])
        assert pod.read_proc_net("if_inet6") == before  # a snapshot, by design
    assert "fd00dead" in pod.read_proc_net("if_inet6")
