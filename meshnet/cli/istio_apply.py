"""The non-dry-run half of `meshnet istio-iptables` (filled in by the applier)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshnet.errors import ApplyError

if TYPE_CHECKING:
    from meshnet.istio_flags import RunOptions
    from meshnet.netns import Netns
    from meshnet.spec import Spec


def apply_istio(spec: Spec, opts: RunOptions, netns: Netns | None) -> int:
    raise ApplyError("applier not available yet: use -n/--dry-run to print the rules")
