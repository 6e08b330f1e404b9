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
            st = _status(stub, pb, grpc, sb.id)
            if st is None:
                continue  # removed meanwhile
            netns, pid = _netns_of(dict(st.info))
            out.append({"id": sb.id, "name": sb.metadata.name, "namespace": sb.metadata.namespace,
                        "uid": sb.metadata.uid, "annotations": dict(st.status.annotations or sb.annotations),
                        "labels": dict(st.status.labels or sb.labels),
                        "ip": st.status.network.ip, "netns": netns, "pid": pid})
        return out
    except grpc.RpcError as exc:
        raise CriError(f"CRI {endpoint}: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()


def _status(stub: Any, pb: Any, grpc: Any, sandbox_id: str, verbose: bool = True) -> Any:
    """PodSandboxStatus, None when the sandbox is gone; a slow runtime gets a second try."""
    for attempt in (1, 2):
        try:
            return stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose),
                                         timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND or attempt == 2:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
    return None


def sandbox_ready(endpoint: str, sandbox_id: str) -> bool:
    """Is this sandbox still there and READY (not being stopped or removed)?"""
    import grpc

    from meshnet.cri import cri_subset_pb2 as pb
    from meshnet.cri import cri_subset_pb2_grpc as pbg

    channel = _channel(endpoint)
    try:
        st = _status(pbg.RuntimeServiceStub(channel), pb, grpc, sandbox_id, verbose=False)
        return st is not None and st.status.state == pb.SANDBOX_READY
    except grpc.RpcError:
        return False
    finally:
        channel.close()
