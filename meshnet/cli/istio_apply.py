"""The non-dry-run half of `meshnet istio-iptables`: apply, clean up and/or validate, like istio-init.

Exit codes as Istio: 0, 1 (any failure, one line on stderr), 126 (validation failed). Only the
applier's light modules are imported here: no click, no yaml, no iptc, and pyroute2 only when
TPROXY routing is actually written.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # keep `typing` off the start-up path
if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.spec.flags import RunOptions
    from meshnet.spec.spec import Spec


def choose_backend(opts: RunOptions, netns: Netns) -> str:
    if opts.native_nftables:
        return "nftables"
    from meshnet.apply.applier import detect_backend

    return detect_backend(netns, force=opts.force_iptables_binary)


def apply_istio(spec: Spec, opts: RunOptions, netns: Netns | None, backend: str | None = None) -> int:
    from meshnet.apply.netns import Netns

    target = netns if netns is not None else Netns.resolve()
    if opts.run_validation:
        from meshnet.apply.validation_probe import client_mode

        uid, gid = _proxy_ids(spec)
        client_mode(uid, gid)  # a client that can never be captured fails here, before any rule is written
    if opts.cleanup_only:
        from meshnet.apply.applier import cleanup

        sys.stdout.write(cleanup(target, spec=spec).message + "\n")
        from meshnet.apply.collision_prevention import restore_quietly

        restored = restore_quietly(target)
        if restored.message:
            sys.stdout.write(restored.message + "\n")
        return 0
    if not opts.skip_rule_apply:
        from meshnet.apply.applier import apply_spec

        result = apply_spec(target, spec, backend=backend or choose_backend(opts, target), reconcile=opts.reconcile,
                            force=opts.force_apply)
        sys.stdout.write(result.message + "\n")
        from meshnet.apply.collision_prevention import enforce_and_report

        # istio-init can write /proc/sys/net only where the runtime mounts it writable; else a warning.
        enforce_and_report(target, spec, sys.stderr.write)
    if opts.run_validation:
        from meshnet.apply.validation_probe import validate
        from meshnet.state.addresses import ipv6_enabled

        # Istio validates over the host IP's family: IPv6 only when the pod has no usable IPv4.
        ipv6 = ipv6_enabled(target, dual_stack=False)
        uid, gid = _proxy_ids(spec)
        sys.stdout.write(validate(target, probe_port=opts.probe_port, timeout=opts.probe_timeout, ipv6=ipv6,
                                  uid=uid, gid=gid) + "\n")
    return 0


def _proxy_ids(spec: Spec) -> tuple[int, int]:
    """The uid/gid the validation client runs as: the first numeric proxy uid/gid (Istio's 1337 default)."""
    uid = int(spec.proxy_uids[0]) if spec.proxy_uids[0].isdigit() else 1337
    gid = int(spec.proxy_gids[0]) if spec.proxy_gids[0].isdigit() else uid
    return uid, gid
