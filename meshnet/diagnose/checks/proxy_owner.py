"""The proxy listening on the capture ports runs as a uid/gid the rules do not exclude: its own
outbound connections are captured again and loop back into it (the OpenShift case, where the
sidecar gets a random uid from the namespace's range instead of 1337)."""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.capture_probes import Probe, _explain, pod_addresses, probes, verdict_ok
from meshnet.diagnose.checks.intent import intents
from meshnet.diagnose.checks.sockets_owner import tcp_listeners, with_owners
from meshnet.lite.records import replace


def run(ctx: Context) -> list[Finding]:
    if not ctx.live.istio_backends():
        return []
    table = intents(ctx.live)
    capture_ports = {p for it, _ in table.values() for p in (it.outbound_port, it.inbound_port) if p}
    listening = [s for s in tcp_listeners(ctx.netns) if s.port in capture_ports]
    if not listening:
        return []  # nothing listens: proxy-not-listening says so
    owners = {(s.uid, s.gid): s for s in with_owners(ctx.netns, listening)}
    addrs = pod_addresses(ctx.netns)
    evidence: list[str] = []
    fixes: list[str] = []
    for (backend, fam), (intent, _rules) in table.items():
        pod = addrs.get(fam)
        outbound = next((p for p in probes(intent, fam, pod) if p.kind == "outbound-not-captured"), None) \
            if pod else None
        if outbound is None:
            continue
        for (uid, gid), sock in owners.items():
            packet = replace(outbound.packet, uid=uid, gid=uid if gid is None else gid)
            probe = Probe(f"outbound from the proxy's uid {uid}", packet, "bypass", None, "proxy-uid-not-excluded")
            ex = _explain(ctx, backend, packet)
            if verdict_ok(probe, ex) is not False:
                continue
            if f"listener: {sock.text()}" not in evidence:
                evidence.append(f"listener: {sock.text()}")
            evidence += [f"rules exclude uid {','.join(map(str, sorted(intent.proxy_uids))) or 'none'}, "
                         f"gid {','.join(map(str, sorted(intent.proxy_gids))) or 'none'} ({backend} v{fam})",
                         f"probe: {packet.describe()}", *(f"  path: {p}" for p in ex.paths),
                         f"  verdict: {ex.verdict.text if ex.verdict else '-'} (intended: not intercepted)"]
            fix = (f"run the sidecar as the excluded uid (runAsUser/runAsGroup "
                   f"{min(intent.proxy_uids or intent.proxy_gids or {1337})}), or render the rules for the uid it "
                   f"really has (istio-iptables -u {uid} -g {gid if gid is not None else uid}; on OpenShift the "
                   "uid comes from the namespace's openshift.io/sa.scc.uid-range)")
            if fix not in fixes:
                fixes.append(fix)
    if not evidence:
        return []
    return [Finding("proxy-uid-not-excluded", "critical",
                    "the proxy listening on the capture ports runs as a uid/gid the rules do not exclude: its own "
                    "outbound connections are captured again (a redirect loop)", evidence, "; ".join(fixes))]
