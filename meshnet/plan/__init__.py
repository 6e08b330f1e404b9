"""Step 2: Spec -> rule model. The model (iptables tables/chains/rules, Istio's nftables tables), the
builders that emit it in Istio's exact order, and the pure renderers to iptables-restore and nft text."""
