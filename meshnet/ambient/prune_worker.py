"""Last step of an ambient iptables-nft spawn (ambient/xt_apply.py): delete what iptables-nft left empty.

Runs inside the namespace (the spawn is already there), after the restores, so a kill of meshnet
between the swap and the prune cannot leave empty guardrail chains or unused tables behind.
stdin: {"4": {"filter": ["INPUT", ...], "raw": null}, "6": {...}}, as backends/nft_prune.prune_empty
takes it (null = every base chain of the table). Best effort like prune_empty: always exit 0.
"""

from __future__ import annotations

import sys


def main() -> int:
    from meshnet.apply.backends.nft_prune import prune_empty
    from meshnet.apply.netns import Netns
    from meshnet.lite import jsonlite as json

    try:
        doc = json.loads(sys.stdin.read() or "{}")
        here = Netns.resolve()
        for fam, tables in doc.items():
            prune_empty(here, 6 if fam == "6" else 4,
                        {t: (set(c) if c is not None else None) for t, c in tables.items()})
    except Exception as exc:  # leftovers are inert; the restores before this step are what counts
        print(f"meshnet prune: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
