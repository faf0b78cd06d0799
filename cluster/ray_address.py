"""Which Ray cluster a run uses: attach to one that is already there, or start a local one.

Ray users run a driver three ways, and each must just work:

- inside ``ray job submit -- compactrec train cfg.yaml``: the job supervisor sets
  ``RAY_ADDRESS`` to the cluster's GCS address;
- on a machine where ``ray start --head`` is running: the head recorded its address in
  ``<ray temp dir>/ray_current_cluster`` (``/tmp/ray`` unless ``RAY_TMPDIR`` says otherwise);
- with ``cluster.address`` set (``auto``, ``HOST:PORT``, ``ray://HOST:10001``).

Attaching to a cluster must not pass ``num_cpus`` / ``num_gpus`` / ``include_dashboard`` to
``ray.init`` (Ray refuses: "When connecting to an existing cluster, num_cpus and num_gpus
must not be provided"); the cluster already has its resources.

``cluster.address``:

=========  ==========================================================================
``""``     attach if ``RAY_ADDRESS`` is set or a live ``ray start`` head is recorded,
           else start a local cluster (the default)
``local``  always start a new local cluster (also ``RAY_ADDRESS=local``)
other      attach to exactly that address (``auto``: the recorded head, or fail)
=========  ==========================================================================
"""

from __future__ import annotations

import os
from typing import Optional

LOCAL = "local"


def cluster_address(configured: str) -> Optional[str]:
    """The address to attach to, or ``None`` to start a local cluster (see the module doc)."""
    if configured == LOCAL:
        return None
    if configured:
        return configured
    env = os.environ.get("RAY_ADDRESS", "")
    if env:
        return None if env == LOCAL else env
    return running_head()


def running_head() -> Optional[str]:
    """The GCS address of the head that the last ``ray start`` on this machine recorded, if
    its GCS process is still alive (a head killed without ``ray stop`` leaves the record
    behind: attaching to it would hang until Ray's connect timeout)."""
    try:  # the same lookup `ray.init()` does for an empty address (ray._private.services)
        from ray._private.services import find_bootstrap_address, find_gcs_addresses

        recorded = find_bootstrap_address(None)
        if recorded and recorded in find_gcs_addresses():
            return recorded
    except Exception:  # a private Ray helper: if it moves, fall back to a local cluster
        return None
    return None
