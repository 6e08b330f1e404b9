"""The exec'd entry point of the plugin file: ask the node agent, else run the plugin in-process.

Only builtin C modules are imported before the agent answers (`_socket`, `_struct`): when the
agent runs, a pod start pays for the interpreter and this file, not for the rule machinery.
The agent is used only if its socket accepts the connection; if it is absent, or dies before
answering, the same request runs in-process (ADD/DEL are idempotent, CHECK only reads). If it
accepted and stays silent past the timeout, the runtime gets "try again later" rather than two
concurrent applies into one namespace.
"""

from __future__ import annotations

import _socket
import _struct
import os
import sys

DEFAULT_SOCKET = "/run/meshnet-cni/agent.sock"
SOCKET_ENV = "MESHNET_CNI_AGENT_SOCKET"  # "" or "off" disables the agent
MAGIC = b"MNCNI1\n"
REPLY_TIMEOUT = 120.0


def encode_request(env: dict[str, str], stdin: bytes) -> bytes:
    block = b"\0".join(f"{k}={v}".encode() for k, v in sorted(env.items()))
    return MAGIC + _struct.pack("!I", len(block)) + block + stdin


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    start = len(MAGIC) + 4
    if not data.startswith(MAGIC) or len(data) < start:
        raise ValueError("not a meshnet-cni request")
    (size,) = _struct.unpack("!I", data[len(MAGIC):start])
    env: dict[str, str] = {}
    for item in data[start:start + size].split(b"\0"):
        key, sep, value = item.decode().partition("=")
        if sep:
            env[key] = value
    return env, data[start + size:]


def ask_agent(path: str, request: bytes) -> tuple[int, bytes] | None:
    """(exit code, stdout) from the agent; None if it is not there or died before answering."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None  # no agent: run in-process
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.sendall(request)
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            raise  # the caller answers "try again later"
        except OSError:
            return None  # the worker died (reset): run in-process
        reply = b"".join(chunks)
        return (reply[0], reply[1:]) if reply else None
    finally:
        sock.close()


def _try_again() -> int:
    # A CNI error object (11: try again later), written without importing json.
    sys.stdout.write('{"cniVersion": "1.0.0", "code": 11, "msg": "meshnet-cni agent did not answer in time", '
                     '"details": ""}\n')
    return 1


def main() -> None:
    stdin = sys.stdin.buffer.read()
    path = os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    if path and path != "off":
        env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
        try:
            answer = ask_agent(path, encode_request(env, stdin))
        except TimeoutError:
            sys.exit(_try_again())
        if answer is not None:
            code, out = answer
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
            os._exit(code)  # the answer is out: skip the interpreter teardown
    import io

    from meshnet.cni.plugin import run
    from meshnet.lite.fastexit import exit_now

    exit_now(run(io.BytesIO(stdin), sys.stdout, os.environ))
