#!/usr/bin/env bash
# Run the five-tuple collision reproduction on Debian 12's 6.1 kernel in a throwaway qemu VM
# (../shared/tools/oldkernel-vm), where the second connection hangs: the real "503 UF".
# Usage: vagrant/run-oldkernel.sh [KABI]   e.g. KABI=6.12.117+deb12-amd64 for a fixed kernel.
#        SCRIPT=collision-groups.sh vagrant/run-oldkernel.sh   the per-group analyzer scenario instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
vmtool="$root/../shared/tools/oldkernel-vm/run-vm.sh"
[ -x "$vmtool" ] || { echo "run-oldkernel: $vmtool not found" >&2; exit 2; }
# The runner builds its image with debootstrap and boots it with qemu: install them when missing.
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
command -v qemu-system-x86_64 >/dev/null || \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
payload=$tmp/meshnet-vm   # the guest sees it as /payload/meshnet-vm
mkdir -p "$payload"

# Only the stdlib parts are needed inside the VM: the repro script and meshnet's pure-python modules.
script=${SCRIPT:-collision-repro.sh}
cp -r "$root/meshnet" "$root/probes" "$root/vagrant/$script" "$payload/"
KABI=${1:-${KABI:-6.1.0-56-amd64}} "$vmtool" "$payload" "bash /payload/meshnet-vm/$script"
