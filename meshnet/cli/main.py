"""`meshnet` entry point.

`meshnet istio-iptables` is the istio-init hot path: it is dispatched before click (and anything
heavy) is imported, so a pod start pays only for what it uses. Every other command is click; a
usage error is one line (`meshnet apply: error: ...`) and exit 2, as the commands' own errors.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "istio-iptables":
        from meshnet.cli.istio_iptables import run

        code = run(args[1:])
        if argv is None:  # a real process, not a call from Python: skip the interpreter teardown
            from meshnet.lite.fastexit import exit_now

            exit_now(code)
        return code
    import click

    from meshnet.cli.app import cli
    from meshnet.cli.errors import fail

    try:
        return cli.main(args=args, prog_name="meshnet", standalone_mode=False) or 0
    except click.NoSuchOption as exc:  # argparse's wording, which scripts and tests match
        hint = f" (did you mean {', '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
        return fail(f"unrecognized arguments: {exc.option_name}{hint}", exc.exit_code, _prog(exc))
    except click.ClickException as exc:
        return fail(exc.format_message(), exc.exit_code, _prog(exc))
    except click.Abort:
        return fail("interrupted", 130)


def _prog(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    return ctx.command_path if ctx is not None else "meshnet"


if __name__ == "__main__":
    sys.exit(main())
