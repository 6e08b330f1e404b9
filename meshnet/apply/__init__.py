"""Step 3: program a pod's network namespace. The applier (atomic, idempotent, reversible) over the
backends, the namespace handle, capability checks, the collision prevention sysctl, repair in place and
the istio-validation probe."""
