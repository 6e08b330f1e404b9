"""A minimal CRI client: which pod sandboxes run on the node, and their network namespaces."""

from __future__ import annotations

import json
from typing import Any

from meshnet.errors import MeshnetError

CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 10.0


class CriError(MeshnetError):
    exit_code = 2


def _channel(endpoint: str) -> Any:
    try:
        import grpc
    except ImportError:
        raise CriError("--cri needs grpcio and protobuf (pip install 'meshnet[cri]')") from None
    if not endpoint.startswith(("unix://", "unix:")):
        if endpoint.startswith("/"):
            endpoint = f"unix://{endpoint}"
        else:
            raise CriError(f"CRI endpoint {endpoint!r}: expected unix:///path/to/socket")
    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
    except grpc.FutureTimeoutError:
        channel.close()
        raise CriError(f"CRI endpoint {endpoint}: not reachable within {CONNECT_TIMEOUT:g}s") from None
    return channel


def _netns_of(info: dict[str, str]) -> tuple[str | None, int | None]:
    """containerd and CRI-O put the OCI runtime spec (with the network namespace path) and the
    sandbox pid in the verbose `info` map, as JSON."""
    try:
        data = json.loads(info.get("info", "{}"))
    except ValueError:
        return None, None
    pid = data.get("pid") if isinstance(data.get("pid"), int) and data.get("pid") > 0 else None
    spec = data.get("runtimeSpec") or {}
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"]), pid
    return None, pid


def list_sandboxes(endpoint: str) -> list[dict[str, Any]]:
    """Ready pod sandboxes: id, name, namespace, uid, annotations, netns path, pid."""
    import grpc

    from meshnet.cri import cri_subset_pb2 as pb
    from meshnet.cri import cri_subset_pb2_grpc as pbg

    channel = _channel(endpoint)
    try:
        stub = pbg.RuntimeServiceStub(channel)
        ready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
        items = stub.ListPodSandbox(pb.ListPodSandboxRequest(filter=ready), timeout=CALL_TIMEOUT).items
        out = []
        for sb in items:
            try:
                st = stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sb.id, verbose=True),
                                           timeout=CALL_TIMEOUT)
            except grpc.RpcError:
                continue  # removed meanwhile
            netns, pid = _netns_of(dict(st.info))
            out.append({"id": sb.id, "name": sb.metadata.name, "namespace": sb.metadata.namespace,
                        "uid": sb.metadata.uid, "annotations": dict(st.status.annotations or sb.annotations),
                        "ip": st.status.network.ip, "netns": netns, "pid": pid})
        return out
    except grpc.RpcError as exc:
        raise CriError(f"CRI {endpoint}: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
