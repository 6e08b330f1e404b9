"""`meshnet` entry point.

`meshnet istio-iptables` is the istio-init hot path: it is dispatched before click (and anything
heavy) is imported, so a pod start pays only for what it uses.
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
    from meshnet.cli.app import cli

    return cli.main(args=args, prog_name="meshnet", standalone_mode=True) or 0


if __name__ == "__main__":
    sys.exit(main())
