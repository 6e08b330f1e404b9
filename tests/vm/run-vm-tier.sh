#!/usr/bin/env bash
# `make test-vm`: the five-tuple collision prevention proven on Debian 12's 6.1 kernel (where the
# second connection really hangs), in a throwaway qemu VM (../shared/tools/oldkernel-vm).
# The one documented exception to the self-contained repository: the VM tool is not vendored (it builds a
# 2.5 GB Debian 12 image); point OLDKERNEL_VM at its run-vm.sh when it lives elsewhere. `make test` never uses it.
# Runs meshnet from this working tree inside the guest; prints one line per check and
# "N passed, N failed"; exit 0 only when every check passed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
vmtool=${OLDKERNEL_VM:-$root/../shared/tools/oldkernel-vm/run-vm.sh}
[ -x "$vmtool" ] || { echo "test-vm: $vmtool not found (set OLDKERNEL_VM to oldkernel-vm's run-vm.sh)" >&2; exit 2; }
site=$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
payload=$tmp/meshnet-vm          # the guest sees it as /payload/meshnet-vm
mkdir -p "$payload/lib"
cp -r "$root/meshnet" "$payload/lib/"
# meshnet's pure-python dependencies (the guest has Debian's python3 3.11 and no network)
for pkg in click yaml pyroute2; do cp -r "$site/$pkg" "$payload/lib/"; done
cp "$root/tests/vm/collision_prevention_guest.py" "$payload/"
find "$payload" -name __pycache__ -prune -exec rm -rf {} +
# KVM is not usable on these machines (the tool falls back itself, but the failed try costs seconds)
ACCEL=${ACCEL:-tcg} TIMEOUT=${TIMEOUT:-600} KABI=${KABI:-6.1.0-56-amd64} \
  "$vmtool" "$payload" "PYTHONPATH=/payload/meshnet-vm/lib python3 /payload/meshnet-vm/collision_prevention_guest.py"
