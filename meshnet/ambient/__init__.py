"""Istio ambient mode: in-pod redirection to the node's ztunnel (istio-cni `cni/pkg/iptables`, `cni/pkg/nftables`).

`spec` holds the validated configuration, `xt_builder` / `nft_builder` turn it into the shared rule
model, `render` prints Istio's goldens, `apply` programs a pod (or a node) namespace.
"""
