#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian machine, run as root:
# system packages (netfilter user space, conntrack, iproute2, CNI reference plugins, build tools)
# and a project venv in ./.venv with meshnet installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(iptables nftables conntrack iproute2 util-linux containernetworking-plugins
      libnftables1 gcc python3-dev python3-venv tcpdump procps ipset
      golang-go golang-github-appc-cni-dev  # build tests/harness/cnirun (libcni, GOPATH mode: no module download)
      containerd runc libc6-dev)            # tests/harness/crinode: containerd's CRI + a static pause binary
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.meshnet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
