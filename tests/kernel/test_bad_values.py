"""The bad-value corpus: every hostile value issue 10 found, and more, through every way in (istio
flags, their environment variables, spec YAML files, pod annotations, CNI stdin and env, the
diagnostic commands' options). Each must give one line and a non-zero exit, no traceback and no
internal error, quote at most ~80 characters of the value, and change nothing in the namespace
(iptables-save of both families and backends, nft, ip rule/route, addresses compared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.topology import Topology
from harness.traffic_helpers import istio_spec

from meshnet.apply.applier import apply_spec
from meshnet.apply.netns import Netns

HUGE = "1" * 100_000  # a 100 KB value: never echoed whole
HUGE_TEXT = "x" * 100_000
MESHNET = [sys.executable, "-m", "meshnet.cli.main"]
STATUS = {"sidecar.istio.io/status": "{}"}


def deep_json(depth: int = 30_000) -> str:  # 60 KB: fits one argv string (128 KB) for render
    return "[" * depth + "]" * depth


def state(ns: Netns) -> str:
    """Everything a write could touch, without counters."""
    cmds = (["iptables-nft-save"], ["ip6tables-nft-save"], ["nft", "list", "ruleset"], ["ip", "rule"],
            ["ip", "-6", "rule"], ["ip", "route", "show", "table", "all"],
            ["ip", "-6", "route", "show", "table", "all"], ["ip", "addr"])
    out = [line for c in cmds for line in ns.run(c).stdout.splitlines() if not line.startswith("#")]
    legacy = ns.read_proc_net("ip_tables_names") if _exists(ns, "ip_tables_names") else ""
    if legacy.strip():
        out += ns.run(["iptables-legacy-save"]).stdout.splitlines()
    return "\n".join(line.split(" [")[0] if line.startswith(":") else line for line in out)


def _exists(ns: Netns, name: str) -> bool:
    try:
        ns.read_proc_net(name)
        return True
    except FileNotFoundError:
        return False


def one_line_failure(cp: subprocess.CompletedProcess[str], *, code: int | None = None) -> str:
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert cp.returncode != 0, (cp.stdout, cp.stderr)
    if code is not None:
        assert cp.returncode == code, (cp.returncode, cp.stderr)
    assert len(lines) == 1, cp.stderr[:2000]
    assert "Traceback" not in cp.stdout + cp.stderr and "internal error" not in cp.stderr, cp.stderr[:2000]
    assert len(lines[0]) < 1000, lines[0][:1100]
    assert HUGE[:200] not in lines[0] and HUGE_TEXT[:200] not in lines[0]  # quoted to ~80 characters
    return lines[0]


# ------------------------------------------------------------------------------------ corpus
# (istio-iptables flags, words the error must contain)
FLAG_CASES = [
    (["-m", "TPROXY", "-r", "255"], "routing table between 1 and 252"),
    (["-m", "TPROXY", "-r", "254"], "routing table between 1 and 252"),
    (["-m", "TPROXY", "-r", "253"], "routing table between 1 and 252"),
    (["-m", "TPROXY", "-r", "0"], "routing table between 1 and 252"),
    (["-m", "TPROXY", "-r", "4294967295"], "routing table"),
    (["-m", "TPROXY", "-r", "-1"], "routing table"),
    (["-m", "TPROXY", "-r", "0x85"], "routing table"),
    (["-m", "TPROXY", "-r", "١٣٣"], "routing table"),  # Arabic-Indic digits pass str.isdigit()
    (["-m", "TPROXY", "-r", HUGE], "routing table"),
    (["-m", "TPROXY", "-t", "0"], "--istio-inbound-tproxy-mark"),
    (["-m", "TPROXY", "-t", "4294967296"], "--istio-inbound-tproxy-mark"),
    (["-u", "4294967296"], "between 0 and 4294967294"),
    (["-u", "4294967295"], "between 0 and 4294967294"),  # (uid_t)-1: "no change" to the kernel
    (["-g", "99999999999"], "--proxy-gid"),
    (["-u", "root;reboot"], "--proxy-uid"),
    (["-u", HUGE], "--proxy-uid"),
    (["-p", "0"], "--envoy-port"),
    (["-p", "65536"], "--envoy-port"),
    (["-z", HUGE], "--inbound-capture-port"),
    (["-b", "80,٨٠"], "--istio-inbound-ports"),
    (["-d", "15090\n-A INPUT -j DROP"], "single line"),
    (["-i", "10.0.0.0/33"], "--istio-service-cidr"),
    (["-i", "fe80::1%eth0/64"], "--istio-service-cidr"),
    (["-x", "*"], "--istio-service-exclude-cidr"),
    (["-i", HUGE_TEXT], "--istio-service-cidr"),
    (["-c", "eth0;rm -rf /"], "--istio-exclude-interfaces"),
    (["-c", "a" * 16], "--istio-exclude-interfaces"),
    (["-k", HUGE_TEXT], "--kube-virt-interfaces"),
    (["-m", "BRIDGE"], "REDIRECT or TPROXY"),
    (["--probe-timeout", "1e308s"], "--probe-timeout"),
    (["--probe-timeout", "99999999999999999999999s"], "--probe-timeout"),
    (["--probe-timeout", "nans"], "--probe-timeout"),
    (["--redirect-dns", "--dual-stack=maybe"], "--dual-stack"),
]

# (environment, words): the same values through istio-iptables' variables
ENV_CASES = [
    ({"ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY", "ISTIO_INBOUND_TPROXY_ROUTE_TABLE": "255"}, "routing table"),
    ({"ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY", "ISTIO_INBOUND_TPROXY_MARK": "0"}, "tproxy-mark"),
    ({"PROXY_UID": "4294967296"}, "between 0 and 4294967294"),
    ({"ISTIO_OUTBOUND_OWNER_GROUPS": HUGE_TEXT + ",a"}, "ISTIO_OUTBOUND_OWNER_GROUPS"),
    ({"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "4294967295"}, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
    ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/99"}, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
    ({"ISTIO_SERVICE_CIDR": HUGE_TEXT}, "--istio-service-cidr"),
    ({"PROBE_TIMEOUT": "infs"}, "--probe-timeout"),
]

# (YAML file bytes, words)
YAML_CASES = [
    (b"\x00\x01\x02\xff\xfe binary", "not UTF-8"),
    (b"\xff\xfe\x00m\x00o\x00d\x00e", "not UTF-8"),
    (b"mode: TPROXY\x00", "NUL"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b"".join(b"  " * i + b"a%d:\n" % i for i in range(200)), "nested deeper"),
    (b"mode: [unclosed", "not valid YAML"),
    (b"- just\n- a list\n", "mapping"),
    (b"1: 2\n", "must be strings"),
    (b"mode: TPROXY\ntproxy_route_table: 255\n", "routing table between 1 and 252"),
    (b"tproxy_route_table: 0\n", "routing table"),
    (b"tproxy_mark: 0\n", "tproxy_mark"),
    (b"proxy_uids: [4294967296]\n", "between 0 and 4294967294"),
    (b"proxy_port: 1e400\n", "proxy_port"),
    (b"proxy_port: .nan\n", "proxy_port"),
    (b"proxy_port: true\n", "proxy_port"),
    (b"redirect_dns: true\ndns_servers_v6: ['fe80::1%eth0']\n", "zone id"),
    (b"dns_servers_v6: ['::1%lo']\n", "zone id"),
    (b"exclude_interfaces: ['" + HUGE_TEXT.encode() + b"']\n", "exclude_interfaces"),
    (b"inbound_ports: " + HUGE.encode() + b"\n", "not a usable YAML document"),  # an int of 100 000 digits
    (b"inbound_ports: '" + HUGE.encode() + b"'\n", "inbound_ports"),
    (b"a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b]\n",
     "unknown field"),
    (b"bogus_field: 1\n", "unknown field"),
]

# (annotations, words): through `render --cni` and through CNI ADD (runtimeConfig)
ANNOTATION_CASES = [
    ({"proxy.istio.io/config": deep_json()}, "proxy.istio.io/config"),
    ({"proxy.istio.io/config": '{"proxyMetadata": ' * 5000 + "{}" + "}" * 5000}, "proxy.istio.io/config"),
    ({"proxy.istio.io/config": "a:\n" + "".join("  " * i + f"b{i}:\n" for i in range(1, 300))},
     "proxy.istio.io/config"),
    ({"proxy.istio.io/config": '{"proxyMetadata": {"INVALID_DROP": "' + HUGE_TEXT + '"}}'}, "INVALID_DROP"),
    ({"traffic.sidecar.istio.io/excludeInboundPorts": HUGE}, "excludeInboundPorts"),
    ({"traffic.sidecar.istio.io/includeOutboundIPRanges": "fe80::1%eth0/64"}, "includeOutboundIPRanges"),
    ({"traffic.sidecar.istio.io/excludeInterfaces": "eth0\n-A INPUT -j DROP"}, "excludeInterfaces"),
    ({"sidecar.istio.io/interceptionMode": HUGE_TEXT}, "interceptionMode"),
]


@pytest.fixture(scope="module")
def pod() -> Iterator[Netns]:
    """One pod namespace holding a working TPROXY set-up (rules and routing), which no bad value may change."""
    with Topology() as t:
        apply_spec(t.pod, istio_spec("-m", "TPROXY"), backend="iptables-nft")
        yield t.pod


@pytest.mark.netns
@pytest.mark.parametrize(("flags", "words"), FLAG_CASES, ids=lambda v: str(v)[:40])
def test_bad_flag_values(pod: Netns, flags: list[str], words: str) -> None:
    before = state(pod)
    for argv in ([*MESHNET, "apply", "--netns", pod.label, "--reconcile", *flags],
                 ["nsenter", f"--net={pod.path}", "--", *MESHNET, "istio-iptables", "--reconcile", *flags]):
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert words in one_line_failure(cp), cp.stderr[:500]
    assert state(pod) == before


@pytest.mark.netns
@pytest.mark.parametrize(("env", "words"), ENV_CASES, ids=lambda v: str(v)[:40])
def test_bad_environment_values(pod: Netns, env: dict[str, str], words: str) -> None:
    before = state(pod)
    cp = subprocess.run(["nsenter", f"--net={pod.path}", "--", *MESHNET, "istio-iptables", "--reconcile"],
                        capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert words in one_line_failure(cp), cp.stderr[:500]
    assert state(pod) == before


@pytest.mark.netns
@pytest.mark.parametrize(("content", "words"), YAML_CASES, ids=lambda v: repr(v)[:40])
def test_bad_spec_files(pod: Netns, tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    before = state(pod)
    cp = subprocess.run([*MESHNET, "apply", "--netns", pod.label, "--reconcile", "-f", str(path)],
                        capture_output=True, text=True, timeout=60)
    assert words in one_line_failure(cp), cp.stderr[:500]
    assert state(pod) == before
    # The diagnostic commands read the same files: could not use the spec = exit 2.
    for cmd in ("diff", "status", "doctor"):
        cp = subprocess.run([*MESHNET, cmd, "--netns", pod.label, "-f", str(path)], capture_output=True, text=True,
                            timeout=120)
        assert words in one_line_failure(cp, code=2), (cmd, cp.stderr[:500])


@pytest.mark.parametrize(("annotations", "words"), ANNOTATION_CASES, ids=lambda v: str(v)[:40])
def test_bad_annotations_render(annotations: dict[str, str], words: str) -> None:
    args = [f"--annotation={k}={v}" for k, v in {**STATUS, **annotations}.items()]
    cp = subprocess.run([*MESHNET, "render", "--cni", *args], capture_output=True, text=True, timeout=60)
    assert words in one_line_failure(cp)


def cni(stdin: bytes, env: dict[str, str]) -> tuple[int, dict[str, object]]:
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "eth0",
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MESHNET_CNI_AGENT_SOCKET": "off"}
    cp = subprocess.run([sys.executable, "-m", "meshnet.cni.plugin"], input=stdin, capture_output=True, timeout=60,
                        env={**base, **env})
    assert b"Traceback" not in cp.stdout + cp.stderr, cp.stderr[-2000:]
    lines = cp.stdout.decode().splitlines()
    assert len(lines) == 1, cp.stdout[:2000]
    err = json.loads(lines[0])
    assert err["code"] != 999 and "internal error" not in str(err["msg"]), err  # never a bug's error object
    assert len(str(err["msg"])) < 1000 and "\n" not in str(err["msg"]), str(err)[:500]
    assert HUGE_TEXT[:200] not in str(err["msg"]) and HUGE[:200] not in str(err["msg"])
    return cp.returncode, err


def conf(**fields: object) -> dict[str, object]:
    """An injected pod's ADD (not skipped: the sidecar status annotation is there)."""
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "meshnet-cni", "backend": "iptables-nft",
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/24"}]},
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": STATUS}, **fields}


@pytest.fixture
def clean_pod() -> Iterator[Netns]:
    with Topology() as t:
        yield t.pod


@pytest.mark.netns
@pytest.mark.parametrize(("annotations", "words"), ANNOTATION_CASES, ids=lambda v: str(v)[:40])
def test_bad_annotations_cni_add(clean_pod: Netns, annotations: dict[str, str], words: str) -> None:
    before = state(clean_pod)
    doc = conf(runtimeConfig={"io.kubernetes.cri.pod-annotations": {**STATUS, **annotations}})
    rc, err = cni(json.dumps(doc).encode(), {"CNI_NETNS": clean_pod.path})
    assert rc == 1 and err["code"] == 100 and words in str(err["msg"]), err
    assert state(clean_pod) == before


@pytest.mark.netns
@pytest.mark.parametrize(("stdin", "env", "code", "words"), [
    (b'{"cniVersion": "1.0.0", "x": ' + deep_json().encode() + b"}", {}, 6, "not valid JSON"),
    (b"\x00\xff\xfe" * 1000, {}, 6, "not valid JSON"),
    (json.dumps(conf(name=HUGE_TEXT, backend=HUGE_TEXT)).encode(), {}, 7, "backend"),
    (json.dumps(conf(k8s_timeout=float("nan"))).encode(), {}, 7, "k8s_timeout"),
    (json.dumps(conf(defaults={"proxy_uid": 4294967295})).encode(), {}, 7, "defaults.proxy_uid"),
    (json.dumps(conf(prevResult=None)).encode(), {}, 7, "prevResult"),
    (json.dumps(conf(prevResult={"ips": [{"address": HUGE_TEXT}]})).encode(), {}, 7, "prevResult"),
    (json.dumps(conf()).encode(), {"CNI_NETNS": "mn-bare-name"}, 4, "absolute path"),
    (json.dumps(conf()).encode(), {"CNI_NETNS": "/proc/self/ns/net"}, 4, "own network namespace"),
    # Even a pod meshnet-cni would skip (no sidecar) may not name the plugin's own namespace.
    (json.dumps(conf(runtimeConfig={})).encode(), {"CNI_NETNS": "/proc/self/ns/net"}, 4, "own network namespace"),
    (json.dumps(conf()).encode(), {"CNI_NETNS": "/" + HUGE_TEXT}, 3, "does not exist"),
    (json.dumps(conf()).encode(), {"CNI_ARGS": HUGE_TEXT}, 4, "CNI_ARGS"),
    (json.dumps(conf()).encode(), {"CNI_COMMAND": HUGE_TEXT}, 4, "CNI_COMMAND"),
])
def test_bad_cni_input(clean_pod: Netns, stdin: bytes, env: dict[str, str], code: int, words: str) -> None:
    before = state(clean_pod), state(Netns.resolve())
    rc, err = cni(stdin, {"CNI_NETNS": clean_pod.path, **env})
    assert rc == 1 and err["code"] == code and words in str(err["msg"]), err
    assert (state(clean_pod), state(Netns.resolve())) == before  # neither the pod's nor our own namespace


@pytest.mark.parametrize("args", [
    ["conntrack", "analyze", "--netns", "mn-x", "--interval", "1e308"],
    ["conntrack", "analyze", "--netns", "mn-x", "--interval", "inf"],
    ["conntrack", "analyze", "--netns", "mn-x", "--interval", "nan"],
    ["conntrack", "analyze", "--netns", "mn-x", "--interval", "-1"],
    ["conntrack", "watch", "--netns", "mn-x", "--duration", "nan"],
    ["conntrack", "watch", "--netns", "mn-x", "--duration", "inf"],
    ["conntrack", "watch", "--netns", "mn-x", "--duration", "1e308"],
    ["conntrack", "watch", "--netns", "mn-x", "--duration", "0"],
    ["conntrack", "watch", "--netns", "mn-x", "--hang-after", "nan"],
    ["validate", "--netns", "mn-x", "--timeout", "1e308s"],
    ["status", "--netns", "mn-x", "-r", "255"],
    ["diff", "--netns", "mn-x", "-u", HUGE],
    ["doctor", "--netns", "mn-x", "-m", "TPROXY", "-r", "0"],
    ["explain", "--netns", "mn-x", "tcp 1.1.1.1:1 -> 2.2.2.2:" + HUGE + " out"],
])
def test_bad_diagnostic_options_exit_2_with_one_line(args: list[str]) -> None:
    cp = subprocess.run([*MESHNET, *args], capture_output=True, text=True, timeout=60)
    code = None if args[0] == "validate" else 2
    one_line_failure(cp, code=code)
