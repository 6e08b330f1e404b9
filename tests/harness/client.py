"""One-shot test client (stdlib only): connect, send a line, print ONE JSON line.

Success: the landing server's reply (a dict with "name"), plus "client": [ip, port] (our
own address) and "reply_from": [ip, port] (who answered: for UDP after reverse NAT).
Failure: {"error": kind, "detail": str} with kind one of
timeout | refused | unreachable | reset | no_reply | bad_reply | oserror.
Always exits 0 unless the arguments are wrong, so the caller can tell test failures
(error dict) from harness failures (non-zero exit).

    client.py --dst 10.1.2.1 --port 80 [--proto tcp|udp] [--src IP] [--sport N] [--timeout 3] [--mark N]
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
from typing import Any


def classify(e: BaseException) -> str:
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "oserror"


def run(args: argparse.Namespace) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    typ = socket.SOCK_DGRAM if args.proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, typ) as s:
        s.settimeout(args.timeout)
        if args.mark:
            s.setsockopt(socket.SOL_SOCKET, 36, args.mark)  # SO_MARK: e.g. ztunnel's own 0x539
        if args.src or args.sport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((args.src or "", args.sport or 0))
        # Connected UDP too: an ICMP port-unreachable then surfaces as "refused", and a reply
        # from an address other than the one we sent to is dropped, as a real resolver would.
        s.connect((args.dst, args.port))
        client = list(s.getsockname()[:2])
        s.sendall(args.message.encode() + b"\n")
        if typ == socket.SOCK_DGRAM:
            data, frm = s.recvfrom(65535)
        else:
            frm = s.getpeername()
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    if not data.strip():
        return {"error": "no_reply", "detail": "connection closed without a reply"}
    try:
        reply = json.loads(data.decode().splitlines()[0])
    except ValueError as e:
        return {"error": "bad_reply", "detail": f"{e}: {data[:200]!r}"}
    reply["client"] = client
    reply["reply_from"] = list(frm[:2])
    return reply


def main() -> None:
    ap = argparse.ArgumentParser(prog="client")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--src", default=None)
    ap.add_argument("--sport", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--message", default="hello")
    ap.add_argument("--mark", type=lambda v: int(v, 0), default=0)
    args = ap.parse_args()
    try:
        out = run(args)
    except OSError as e:
        out = {"error": classify(e), "detail": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
