"""Step 1 of the flow: what to intercept. Readers (istio-iptables flags/env, YAML profiles, pod
annotations, resolv.conf) produce one validated `Spec` (spec.py); `values` is the grammar of every
value that may reach iptables-restore or nft text."""
