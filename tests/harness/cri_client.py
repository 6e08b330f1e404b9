"""crinode's CRI client (../shared/tools/crinode/cri.py), with the pods under a cgroup parent of this node's own.

Why: `crinode down` kills every process in any `*/crinode-pods/*` cgroup on the machine, so one node's
teardown kills the pods of every other crinode node alive at that moment (another test session, another
suite). Pods made through this wrapper live under `$MESHNET_CRI_CGROUP_PARENT/pod<uid>` instead; the
node's own teardown removes them through the CRI (and tests/harness/cri_helpers.py removes the cgroups).
Everything else is cri.py unchanged: `python cri_client.py run|stop|rm|container|... ARGS`.
"""

import importlib.util
import os
import sys
from typing import Any

spec = importlib.util.spec_from_file_location("crinode_cri", os.environ["MESHNET_CRI_PY"])
assert spec is not None and spec.loader is not None
cri: Any = importlib.util.module_from_spec(spec)  # crinode's cri.py, known only at run time
spec.loader.exec_module(cri)
_pod_config = cri.pod_config
PARENT = os.environ["MESHNET_CRI_CGROUP_PARENT"]


def pod_config(name: str, namespace: str, uid: str, annotations: dict[str, str], labels: dict[str, str]) -> Any:
    cfg = _pod_config(name, namespace, uid, annotations, labels)
    cfg.linux.cgroup_parent = f"{PARENT}/pod{uid}"
    return cfg


cri.pod_config = pod_config  # pod_config_of (CreateContainer's sandbox config) uses it too
sys.exit(cri.main())
