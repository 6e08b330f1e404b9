#!/usr/bin/env bash
# Inside the VM (or any root shell): the per-group collision analyzer on a real kernel.
# Group A: client :40000 -> :9080 (kept) then -> :8080, which hangs on < 6.7; later its ESTABLISHED
# sibling is deleted from the table. Group B: with tcp_early_demux=0 (the collision is remapped even
# on 6.1) client :40001 -> :9080 and :8080, a long-lived remapped ESTABLISHED pair. Then raced SYNs
# from further ports. Each group must be its own finding: A collision-hang (sibling there or not, on
# < 6.7), B tuple-collision even next to collision-race-drops.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cleanup() { kill "${srv:-}" "${cla:-}" "${clb:-}" "${clr:-}" 2>/dev/null; ip netns del mn-gcli 2>/dev/null; ip netns del mn-gsrv 2>/dev/null; }
trap cleanup EXIT
ip netns add mn-gcli; ip netns add mn-gsrv
ip link add mn-gc type veth peer name mn-gs
ip link set mn-gc netns mn-gcli; ip link set mn-gs netns mn-gsrv
ip -n mn-gcli addr add 10.99.0.1/24 dev mn-gc; ip -n mn-gsrv addr add 10.99.0.2/24 dev mn-gs
for n in mn-gcli mn-gsrv; do ip -n $n link set lo up; done
ip -n mn-gcli link set mn-gc up; ip -n mn-gsrv link set mn-gs up
ip netns exec mn-gsrv iptables -t nat -N ISTIO_IN_REDIRECT
ip netns exec mn-gsrv iptables -t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
ip netns exec mn-gsrv iptables -t nat -A PREROUTING -p tcp -j ISTIO_IN_REDIRECT
ip netns exec mn-gsrv python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15006)); s.listen(128)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)' &
srv=$!
sleep 0.5
DIAL='
import socket, sys, time, threading
sport, ports, tmo = int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3])
keep = []
def dial(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.99.0.1", sport)); s.settimeout(tmo)
    t = time.time()
    try:
        s.connect(("10.99.0.2", port)); r = "OK"
    except OSError as e:
        r = "FAIL(%s)" % type(e).__name__
    print("RESULT sport=%d dport=%d connect=%s after=%.2fs" % (sport, port, r, time.time() - t), flush=True)
    keep.append(s)
for p in ports:
    dial(p)
time.sleep(60)
'
analyze() {
  echo "== $1"
  ip netns exec mn-gsrv conntrack -L 2>/dev/null | grep -v "^conntrack"
  ip netns exec mn-gsrv conntrack -S 2>/dev/null | awk '{print $1, $4, $5, $6}'
  PYTHONPATH=$here python3 - <<'PY'
from meshnet.apply.netns import Netns
from meshnet.diagnose.conntrack.snapshot import collect_live
from meshnet.diagnose.conntrack.findings import analyze
for f in analyze(collect_live(Netns.resolve("mn-gsrv"))):
    clients = [c["client"] for c in f.details.get("collisions", [])]
    print("FINDING", f.kind, f.severity, clients, "-", f.summary[:160])
PY
}
# group A: the hang (early demux on, the default)
ip netns exec mn-gcli python3 -c "$DIAL" 40000 9080,8080 20 &
cla=$!
sleep 4
analyze "group A pending, its sibling ESTABLISHED"
ip netns exec mn-gsrv conntrack -D -p tcp --orig-src 10.99.0.1 --sport 40000 --dport 9080 >/dev/null 2>&1
analyze "group A pending, its sibling deleted from the table"
# group B: a remapped ESTABLISHED pair (early demux off: remapped even on 6.1)
ip netns exec mn-gsrv sysctl -qw net.ipv4.tcp_early_demux=0
ip netns exec mn-gcli python3 -c "$DIAL" 40001 9080,8080 5 &
clb=$!
sleep 2
# raced SYNs: two threads, one source port, two ports, same moment
ip netns exec mn-gcli python3 -c '
import socket, threading, time
for sport in range(41000, 41030):
    bar = threading.Barrier(2)
    def go(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("10.99.0.1", sport)); s.settimeout(3); bar.wait()
        try: s.connect(("10.99.0.2", port))
        except OSError: pass
        keep.append(s)
    keep = []
    th = [threading.Thread(target=go, args=(p,)) for p in (9080, 8080)]
    [t.start() for t in th]; [t.join() for t in th]
print("RACE done", flush=True)
time.sleep(60)' &
clr=$!
sleep 8
analyze "groups A, B and the raced SYNs"
echo "KERNEL $(uname -r)"
