"""Generic fixtures shared by all test modules. Keep it small; helpers live in topology.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.topology import Topology, is_root

from meshnet.apply.netns import Netns

_NOT_ROOT = "needs root for real network namespaces (CI runs as root)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `netns` are skipped with a visible reason when not root, never silently.
    if is_root():
        return
    skip = pytest.mark.skip(reason=_NOT_ROOT)
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A fresh pod <-> peer Topology (IPv4 + IPv6), torn down after the test."""
    if not is_root():
        pytest.skip(_NOT_ROOT)
    with Topology() as topo:
        yield topo


@pytest.fixture(scope="session")
def cri_node() -> Iterator[object]:
    """One containerd CRI node per session (tests/harness/cri_helpers.py), with the image from `make images`."""
    if not is_root():
        pytest.skip(_NOT_ROOT)
    from harness.cri_helpers import CriNode, build_image

    build_image()  # the same script as `make images`: the working tree's meshnet, the cached base
    with CriNode() as node:
        yield node


@pytest.fixture
def topo() -> Iterator[Topology]:
    """A Topology whose pod is certainly not the caller's namespace (modules may define their own)."""
    if not is_root():
        pytest.skip(_NOT_ROOT)
    with Topology() as t:
        assert not t.pod.is_current()
        yield t


@pytest.fixture
def quiet_host() -> Iterator[Netns]:
    """A stand-in for the host with no rules at all, so the real host's state cannot leak in."""
    if not is_root():
        pytest.skip(_NOT_ROOT)
    with Topology(ipv6=False) as t:
        yield t.peer


@pytest.fixture(params=("nft", "legacy"))
def variant(request: pytest.FixtureRequest) -> str:
    """Each iptables variant in turn (modules that write foreign rules with the variant's own tools)."""
    if not is_root():
        pytest.skip(_NOT_ROOT)
    return str(request.param)
