"""Backends that make a namespace's kernel state match a rule plan (and undo it).

* `xtables`: iptables-restore / ip6tables-restore, legacy or nft variant (one restore per family);
* `nftables`: one atomic `nft -f` transaction in Istio's `inet istio-proxy-*` tables;
* `iptc`: python-iptables in a dedicated worker process (legacy only);
* `routing`: TPROXY policy routing and the `::6` inbound-passthrough address.
"""

from __future__ import annotations

LEGACY = "iptables-legacy"
NFT = "iptables-nft"
NFTABLES = "nftables"
IPTC = "iptc"
BACKENDS = (LEGACY, NFT, NFTABLES, IPTC)
