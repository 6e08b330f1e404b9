"""The `meshnet` click group. Subcommands live in their own modules and import heavy code lazily."""

from __future__ import annotations

import click

from meshnet.cli.apply_cmd import apply_cmd
from meshnet.cli.cleanup_cmd import cleanup_cmd
from meshnet.cli.cni_cmd import cni_cmd
from meshnet.cli.collect_cmd import collect_cmd
from meshnet.cli.conntrack_cmd import conntrack_group
from meshnet.cli.diff_cmd import diff_cmd
from meshnet.cli.doctor_cmd import doctor_cmd
from meshnet.cli.explain_cmd import explain_cmd
from meshnet.cli.probe_cmd import probe_group
from meshnet.cli.render_cmd import render_cmd
from meshnet.cli.repair_cmd import repair_cmd
from meshnet.cli.status_cmd import status_cmd
from meshnet.cli.validate_cmd import validate_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="meshnet")
def cli() -> None:
    """meshnet: Istio-compatible traffic interception for pods, and the tools to diagnose it."""


@cli.command("istio-iptables", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                                 "help_option_names": []}, add_help_option=False)
@click.pass_context
def istio_iptables_cmd(ctx: click.Context) -> None:
    """Drop-in for Istio's istio-iptables in istio-init: same flags, environment and exit codes (see -h)."""
    from meshnet.cli.istio_iptables import run

    ctx.exit(run(list(ctx.args)))


cli.add_command(render_cmd)
cli.add_command(cni_cmd)
cli.add_command(apply_cmd)
cli.add_command(cleanup_cmd)
cli.add_command(status_cmd)
cli.add_command(validate_cmd)
cli.add_command(diff_cmd)
cli.add_command(explain_cmd)
cli.add_command(doctor_cmd)
cli.add_command(collect_cmd)
cli.add_command(repair_cmd)
cli.add_command(conntrack_group)
cli.add_command(probe_group)
