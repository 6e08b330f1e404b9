"""Is the five-tuple collision hang prevented in this pod, and if not, which mitigation fits it?

Only pods whose rules REDIRECT several inbound ports into one capture port are exposed. The fitting
mitigation depends on the kernel (>= 6.7 repairs the collision itself), the mode (TPROXY has nothing
to prevent) and who can change the pod: the pod's `net.ipv4.tcp_early_demux` is writable from the
node (meshnet-cni, `meshnet apply`) but not from inside a container, where /proc/sys is read-only.
"""

from __future__ import annotations

import os

from meshnet.apply.collision_prevention import ALTERNATIVES, kernel_hangs, recorded_value
from meshnet.diagnose.checks import Context, Finding


def _writable(ctx: Context) -> bool:
    path = "/proc/sys/net/ipv4/tcp_early_demux"

    def probe() -> bool:
        return os.access(path, os.W_OK)

    try:
        return probe() if ctx.netns.is_current() else ctx.netns.call_in(probe)
    except Exception:  # noqa: BLE001 - cannot tell: recommend what works from anywhere
        return False


def run(ctx: Context) -> list[Finding]:
    snap = ctx.conntrack
    if snap is None or snap.rules is None or not snap.rules.inbound_funnels:
        return []
    funnel = snap.rules.inbound_funnels[0]
    where = f"{funnel.kind.upper()} sends {funnel.ports_text()} to :{funnel.to_port}"
    release = snap.kernel or os.uname().release
    if not kernel_hangs(release):
        return [Finding("collision-prevention", "info",
                        f"no prevention needed: kernel {release} (>= 6.7) repairs a five-tuple collision itself "
                        f"({where})", [f"kernel {release}"])]
    demux = snap.early_demux
    if demux == 0:
        try:
            mine = recorded_value(ctx.netns) is not None
        except Exception:  # noqa: BLE001 - the record is informative only
            mine = False
        by = "set by meshnet" if mine else "set outside meshnet"
        return [Finding("collision-prevention", "info",
                        f"five-tuple collision prevention in place: tcp_early_demux=0 in the pod ({by}) on kernel "
                        f"{release}; a collision is remapped instead of hanging", [f"tcp_early_demux=0, {where}"])]
    if _writable(ctx):
        fix = (f"meshnet apply --netns {ctx.netns.label} --reconcile --prevent-tuple-collision=early-demux [the "
               "pod's flags] (meshnet-cni does this at pod start under the default auto), or intercept inbound "
               "traffic with TPROXY")
    else:
        fix = ("this container cannot write the pod's /proc/sys (istio-init cannot either): " + ALTERNATIVES)
    return [Finding("collision-prevention", "warning",
                    f"five-tuple collision prevention not in place: on kernel {release} (< 6.7) with "
                    f"tcp_early_demux={demux} a client reusing a source port for two ports of this pod hangs "
                    f"until it gives up (Envoy 503 UF); {where}",
                    [f"kernel {release}", f"tcp_early_demux={demux}", funnel.rule], fix)]
