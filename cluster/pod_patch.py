"""A cluster config's ``pod_patch``: extra fields merged into a rendered pod template.

The merge follows JSON Merge Patch (RFC 7386: objects merge key by key, ``null`` deletes a
key, anything else replaces) with one Kubernetes habit from strategic merge: a list whose
items are all objects with a ``name`` (containers, volumes, volumeMounts, env, ports)
merges item by item on ``name``, new names appended. So a patch can add a sidecar, a
volume, an annotation or a security context without repeating the rendered template::

    pod_patch:
      metadata: {annotations: {prometheus.io/scrape: "true"}}
      spec:
        priorityClassName: training
        containers: [{name: ray-worker, securityContext: {capabilities: {add: [IPC_LOCK]}}}]
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in (neither is modified)."""
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge_patch(target.get(key), value)
        return out
    if isinstance(patch, list) and isinstance(target, list) and _named(patch) and _named(target):
        return _merge_named(target, patch)
    return copy.deepcopy(patch)


def _named(items: List[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def _merge_named(target: List[Dict[str, Any]], patch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    by_name = {p["name"]: p for p in patch}
    out = [merge_patch(t, by_name.pop(t["name"])) if t["name"] in by_name else t for t in target]
    return out + [copy.deepcopy(p) for p in patch if p["name"] in by_name]
