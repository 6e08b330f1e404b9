"""Step 5: say what a namespace does and why. explain (one packet through the rules, or traced by the
kernel), doctor and its checks, node-wide diagnosis, the conntrack collision analyzer, probes and
support bundles."""
