#!/usr/bin/env bash
# Inside the VM (or any root shell): two namespaces, Istio's inbound REDIRECT rules, a client that
# reuses one source port toward two ports of the pod. On kernels < 6.7 the second connect hangs
# (the real "503 UF"); on >= 6.7 it is silently remapped. While the second connect is pending,
# meshnet's analyzer (stdlib only: its own netlink decoder) inspects the pod and prints its findings.
# Expects the meshnet package in the directory of this script.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cleanup() { kill "${srv:-}" "${cli:-}" 2>/dev/null; ip netns del mn-vcli 2>/dev/null; ip netns del mn-vsrv 2>/dev/null; }
trap cleanup EXIT
ip netns add mn-vcli; ip netns add mn-vsrv
ip link add mn-vc type veth peer name mn-vs
ip link set mn-vc netns mn-vcli; ip link set mn-vs netns mn-vsrv
ip -n mn-vcli addr add 10.99.0.1/24 dev mn-vc; ip -n mn-vsrv addr add 10.99.0.2/24 dev mn-vs
for n in mn-vcli mn-vsrv; do ip -n $n link set lo up; done
ip -n mn-vcli link set mn-vc up; ip -n mn-vsrv link set mn-vs up
ip netns exec mn-vsrv iptables -t nat -N ISTIO_IN_REDIRECT
ip netns exec mn-vsrv iptables -t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
ip netns exec mn-vsrv iptables -t nat -A PREROUTING -p tcp -j ISTIO_IN_REDIRECT
ip netns exec mn-vsrv python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15006)); s.listen(16)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)' &
srv=$!
sleep 0.5
ip netns exec mn-vcli python3 -c '
import socket, time
def dial(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.99.0.1", 40000)); s.settimeout(8)
    t = time.time()
    try:
        s.connect(("10.99.0.2", port)); r = "OK"
    except OSError as e:
        r = "FAIL(%s)" % type(e).__name__
    print("RESULT dport=%d connect=%s after=%.2fs" % (port, r, time.time() - t), flush=True)
    return s
a = dial(9080); b = dial(8080)' &
cli=$!
sleep 4   # the second connect is pending now (or already remapped on a fixed kernel)
ip netns exec mn-vsrv conntrack -L 2>/dev/null
PYTHONPATH=$here python3 - <<'PY'
import json
from meshnet.apply.netns import Netns
from meshnet.diagnose.conntrack.snapshot import collect_live
from meshnet.diagnose.conntrack.findings import analyze
for f in analyze(collect_live(Netns.resolve("mn-vsrv"))):
    print("FINDING", f.kind, f.severity, "-", f.summary)
PY
wait $cli
echo "KERNEL $(uname -r)"
