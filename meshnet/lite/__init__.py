"""Start-up-cheap stand-ins for standard-library modules, for the pod-start paths only.

The rule: `meshnet istio-iptables` and `meshnet-cni ADD` run once per pod, so every millisecond of
imports is paid on every pod start. Those paths (and only those) use these stand-ins instead of
`dataclasses`, `subprocess`, `json`, `ipaddress` and interpreter teardown. Each supports exactly the
subset meshnet uses and raises on anything else; each has its own tests (tests/unit/test_records.py,
test_jsonlite.py, test_spawn.py). The diagnostic CLI may import anything.
tests/e2e/test_startup_budget.py runs the real pod-start paths under `python -X importtime` and fails
when a module outside the budget is imported. See docs/applier.md, "Start-up budget".
"""
