"""`meshnet istio-iptables`: drop-in for Istio's istio-iptables (same flags, env, exit codes 0/1/126)."""

from __future__ import annotations

import os
import sys

from meshnet.cli.errors import guarded

RESOLV_CONF_ENV = "MESHNET_RESOLV_CONF"  # default /etc/resolv.conf, as Istio


def run(argv: list[str]) -> int:
    return guarded(lambda: _run_exit_1(argv), prog="istio-iptables")


def _run_exit_1(argv: list[str]) -> int:
    """Istio's exit codes are 0, 1 and 126: a missing capability is one more failure (1)."""
    from meshnet.errors import CapabilityError  # already loaded by meshnet.cli.errors

    try:
        return _run(argv)
    except CapabilityError as exc:
        exc.exit_code = 1
        raise


def _run(argv: list[str]) -> int:
    from meshnet.spec import flags as istio_flags
    from meshnet.spec.resolvconf import read_nameservers
    from meshnet.state.addresses import ipv6_enabled

    env = os.environ
    ns = istio_flags.parse_flags(argv)
    values = istio_flags.values_from(ns, env)
    opts = istio_flags.run_options_from_values(values)
    netns = None
    if opts.network_namespace:
        from meshnet.apply.netns import Netns

        netns = Netns.resolve(opts.network_namespace)
    servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    if istio_flags.needs_resolv_conf(values):
        servers = read_nameservers(env.get(RESOLV_CONF_ENV, "/etc/resolv.conf"))
    spec = istio_flags.spec_from_values(values, env, dns_servers=servers)
    backend: str | None = None
    if netns is None:
        spec = spec.with_changes(enable_ipv6=ipv6_enabled(None, spec.dual_stack))
    elif opts.dry_run or opts.skip_rule_apply or opts.cleanup_only:
        from meshnet.apply.applier import spec_for_netns

        spec = spec_for_netns(spec, netns)
    else:
        from meshnet.apply.applier import prepare

        # IPv6 and the backend from one snapshot of the pod's /proc/net (no ctypes, ~2 ms).
        wanted = "nftables" if opts.native_nftables else "auto"
        spec, backend = prepare(netns, spec, wanted, opts.force_iptables_binary)
    if spec.redirect_dns and not spec.dns_effective:
        sys.stderr.write("istio-iptables: warning: REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false, "
                         "and no DNS servers provided\n")
    if opts.dry_run:
        from meshnet.plan.render_restore import render_transcript

        if opts.native_nftables:
            from meshnet.plan.nft_builder import build_nft
            from meshnet.plan.render_nft import render_nft

            text = render_nft(build_nft(spec))
        else:
            from meshnet.plan.istio_builder import build_iptables

            text = render_transcript(build_iptables(spec))
        dest = env.get("DRY_RUN_FILE_PATH")
        if dest:
            with open(dest, "w", encoding="utf-8") as fh:
                fh.write(text)
        sys.stdout.write(text)
        return 0
    from meshnet.cli import istio_apply

    return istio_apply.apply_istio(spec, opts, netns, backend=backend)
