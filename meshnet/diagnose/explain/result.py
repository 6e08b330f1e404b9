"""What `meshnet explain` answers, for either rule family: the verdict and the path to it."""

from __future__ import annotations

from typing import Literal

from meshnet.diagnose.explain.packet import Packet
from meshnet.lite.records import dataclass, field

VerdictKind = Literal["redirect", "tproxy", "drop", "pass", "uncertain"]
Capture = Literal["outbound", "inbound", "dns"]


@dataclass
class Verdict:
    kind: VerdictKind
    text: str
    port: int | None = None
    capture: Capture | None = None  # for redirect/tproxy

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "text": self.text, "port": self.port, "capture": self.capture}


@dataclass
class Explanation:
    backend: str
    packet: Packet
    paths: list[str] = field(default_factory=list)  # one line per table walked
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"[{self.backend}] {self.packet.describe()}", *(f"  {p}" for p in self.paths)]
        out += [f"  note: {n}" for n in self.notes]
        if self.verdict:
            out.append(f"  verdict: {self.verdict.text}")
        return out

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "packet": self.packet.to_dict(), "paths": self.paths,
                "verdict": self.verdict.to_dict() if self.verdict else None, "notes": self.notes}


def hook_of(packet: Packet) -> str:
    return "OUTPUT" if packet.direction == "out" else "PREROUTING"


def capture_kind(chain: str, port: int, packet: Packet) -> Capture:
    """Name a capture by the chain that did it (Istio's chain names), else by direction."""
    low = chain.lower().replace("_", "-")
    if "dns" in low or port == 15053:
        return "dns"
    if low.endswith("in-redirect") or "tproxy" in low or "inbound" in low:
        return "inbound"
    if low.endswith("redirect"):
        return "outbound"
    return "outbound" if packet.direction == "out" else "inbound"


CAPTURE_TEXT = {"outbound": "outbound capture: the sidecar's outbound listener",
                "inbound": "inbound capture: the sidecar's inbound listener",
                "dns": "DNS capture: the sidecar's DNS proxy"}


def redirect_verdict(chain: str, port: int, packet: Packet) -> Verdict:
    kind = capture_kind(chain, port, packet)
    return Verdict("redirect", f"REDIRECT to :{port} ({CAPTURE_TEXT[kind]})", port, kind)


def tproxy_verdict(chain: str, port: int, mark: str, packet: Packet) -> Verdict:
    kind = capture_kind(chain, port, packet)
    return Verdict("tproxy", f"TPROXY to :{port} mark {mark} ({CAPTURE_TEXT[kind]}; delivered to the transparent "
                             "listener through the fwmark policy route)", port, kind)


def pass_verdict(packet: Packet) -> Verdict:
    dst = f"[{packet.dst}]:{packet.dport}" if packet.family == 6 else f"{packet.dst}:{packet.dport}"
    if packet.direction == "in":
        return Verdict("pass", f"not intercepted: delivered to {dst} (the application, not the proxy)")
    if packet.oif == "lo":
        return Verdict("pass", f"not intercepted: delivered locally to {dst} over lo")
    return Verdict("pass", f"not intercepted: leaves via {packet.oif or '(unknown interface)'} to {dst}")


def uncertain_verdict(text: str) -> Verdict:
    return Verdict("uncertain", text)
