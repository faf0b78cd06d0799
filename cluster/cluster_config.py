"""Kubernetes resources for a run: the schema of ``configs/cluster/*.yaml``.

A file names the container image, the head pod and the worker groups (pods of one shape),
the shared volume and the RayJob's lifetime. ``compactrec submit --k8s RUN.yaml
--cluster-config configs/cluster/X.yaml`` combines it with a run config into one KubeRay
RayJob (``cluster/kuberay.py``). Like the run config, a file states only what differs from
the defaults below, and an unknown or mistyped key is an error naming the key and the file.

Example::

    cc = load_cluster_config("configs/cluster/cpu.yaml")
    cc.worker_groups[0].cpu  # 4
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from compactrec.trainer.config import ConfigError, load_structured

# Kubernetes resource quantity (the CRD's own pattern): "16Gi", "500M", "1e9", "0.5".
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # namespaces, group names
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # Secret names


@dataclass
class HeadConfig:
    """The head pod: runs the GCS, the dashboard and the job's driver (data checks, synthesis)."""

    cpu: int = 2  # CPU cores requested (and limited) for the pod
    memory: str = "8Gi"  # a Kubernetes quantity
    num_cpus: int = 0  # CPUs the head offers to Ray tasks: 0 keeps training workers off the head
    shm: str = "auto"  # /dev/shm: auto (in memory on GPU pods only) | none | a size limit such as 16Gi
    pod_patch: Dict[str, Any] = field(default_factory=dict)  # merged into the head's pod template


@dataclass
class WorkerGroupConfig:
    """Identical worker pods; each hosts ``gpu`` Ray Train workers on a GPU run, or
    ``cpu // cluster.cpus_per_worker`` on a CPU run (see ``kuberay.worker_slots``)."""

    name: str = "workers"  # groupName (a DNS-1123 label)
    replicas: Optional[int] = None  # pods; None: as many as the run's cluster.num_workers needs
    min_replicas: Optional[int] = None  # None: = replicas (a fixed-size cluster, no autoscaler)
    max_replicas: Optional[int] = None  # None: = replicas
    cpu: int = 4
    memory: str = "16Gi"
    gpu: int = 0  # GPUs per pod (requested as `gpu_resource`)
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: Dict[str, str] = field(default_factory=dict)  # e.g. the GPU product label
    # /dev/shm: auto = an in-memory volume on GPU pods (NCCL's intra-node buffers live there;
    # a container's default is 64 MB), none, or a size limit such as 64Gi (any pod)
    shm: str = "auto"
    pod_patch: Dict[str, Any] = field(default_factory=dict)  # merged into this group's pod template


@dataclass
class StorageConfig:
    """A volume mounted at the same path on every pod: data shards, synthetic data, runs."""

    claim: str = ""  # a ReadWriteMany PersistentVolumeClaim in `namespace`; "" mounts nothing
    mount_path: str = "/mnt/compactrec"  # relative data.path / runs_dir resolve here (with a claim)


@dataclass
class KubeClusterConfig:
    """One RayJob's cluster: image, pods, storage, lifetime."""

    image: str = "compactrec:latest"  # built from cluster/Dockerfile; `--image` overrides
    image_pull_policy: str = "IfNotPresent"  # Always | IfNotPresent | Never
    image_pull_secrets: List[str] = field(default_factory=list)  # Secret names for a private registry
    namespace: str = "default"
    ray_version: str = "2.60.0"  # rayClusterSpec.rayVersion: the Ray inside `image`
    service_account: str = ""  # "" : the namespace's default service account
    head: HeadConfig = field(default_factory=HeadConfig)
    worker_groups: List[WorkerGroupConfig] = field(default_factory=lambda: [WorkerGroupConfig()])
    storage: StorageConfig = field(default_factory=StorageConfig)
    env: Dict[str, str] = field(default_factory=dict)  # extra variables in every Ray container
    # merged into every pod template (head, workers), before their own pod_patch; see
    # cluster/pod_patch.py (JSON merge patch, lists of named items merged by name)
    pod_patch: Dict[str, Any] = field(default_factory=dict)
    shutdown_after_job_finishes: bool = True  # delete the RayCluster when the job ends
    ttl_seconds_after_finished: int = 600  # ... this long after it ends (needs shutdown above)
    active_deadline_seconds: Optional[int] = None  # fail the job after this long; None: no limit
    backoff_limit: int = 0  # retries of the whole RayJob (each on a new cluster)


def load_cluster_config(path: str | Path, overrides: Sequence[str] = ()) -> KubeClusterConfig:
    """Defaults <- YAML file <- dotted overrides; validated.

    Raises:
        ConfigError: naming the file and the key that is unknown, mistyped or out of range.
    """
    where = str(path)
    node = load_structured(KubeClusterConfig, path, overrides, what="cluster config")
    cc: KubeClusterConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    check_cluster_config(cc, where)
    return cc



def check_cluster_config(cc: KubeClusterConfig, where: str) -> None:
    """Ranges and names that Kubernetes or KubeRay would reject later, reported now."""

    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{where}: '{key}' {msg}")

    if not cc.image.strip():
        fail("image", "is empty")
    if cc.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        fail("image_pull_policy", f"is {cc.image_pull_policy!r}; expected Always, IfNotPresent or Never")
    if not DNS1123_LABEL.match(cc.namespace):
        fail("namespace", f"is {cc.namespace!r}; expected a DNS-1123 label (lower case, digits, '-')")
    _check_pod("head", cc.head.cpu, cc.head.memory, fail)
    _check_shm("head.shm", cc.head.shm, fail)
    for i, secret in enumerate(cc.image_pull_secrets):
        if not DNS1123_SUBDOMAIN.match(secret) or len(secret) > 253:
            fail(f"image_pull_secrets[{i}]", f"is {secret!r}; expected a Secret name (DNS-1123 subdomain)")
    if cc.head.num_cpus < 0 or cc.head.num_cpus > cc.head.cpu:
        fail("head.num_cpus", f"is {cc.head.num_cpus}; expected 0..head.cpu ({cc.head.cpu})")
    names = [g.name for g in cc.worker_groups]
    if len(set(names)) != len(names):
        fail("worker_groups", f"has duplicate names {names}")
    for i, g in enumerate(cc.worker_groups):
        key = f"worker_groups[{i}]"
        if not DNS1123_LABEL.match(g.name) or len(g.name) > 63:
            fail(f"{key}.name", f"is {g.name!r}; expected a DNS-1123 label")
        _check_pod(key, g.cpu, g.memory, fail)
        _check_shm(f"{key}.shm", g.shm, fail)
        if g.gpu < 0:
            fail(f"{key}.gpu", f"is {g.gpu}; expected >= 0")
        for k in ("replicas", "min_replicas", "max_replicas"):
            if (getattr(g, k) or 0) < 0:
                fail(f"{key}.{k}", f"is {getattr(g, k)}; expected >= 0")
        lo, hi = g.min_replicas, g.max_replicas
        if lo is not None and hi is not None and lo > hi:
            fail(f"{key}.min_replicas", f"({lo}) is greater than max_replicas ({hi})")
        if g.replicas is not None and not (lo or 0) <= g.replicas <= (hi if hi is not None else g.replicas):
            fail(f"{key}.replicas", f"({g.replicas}) is outside min_replicas..max_replicas ({lo}..{hi})")
    if cc.storage.claim and not cc.storage.mount_path.startswith("/"):
        fail("storage.mount_path", f"is {cc.storage.mount_path!r}; expected an absolute path")
    if cc.ttl_seconds_after_finished < 0:
        fail("ttl_seconds_after_finished", "must be >= 0")
    if cc.ttl_seconds_after_finished > 0 and not cc.shutdown_after_job_finishes:
        fail("ttl_seconds_after_finished", "must be 0 when shutdown_after_job_finishes is false (KubeRay rejects it)")
    if cc.active_deadline_seconds is not None and cc.active_deadline_seconds <= 0:
        fail("active_deadline_seconds", "must be > 0 (or null for no limit)")
    if cc.backoff_limit < 0:
        fail("backoff_limit", "must be >= 0")


def _check_shm(key: str, shm: str, fail) -> None:
    if shm not in ("auto", "none") and not QUANTITY.match(str(shm)):
        fail(key, f"is {shm!r}; expected auto, none or a Kubernetes quantity such as 16Gi")


def _check_pod(key: str, cpu: int, memory: str, fail) -> None:
    if cpu <= 0:
        fail(f"{key}.cpu", f"is {cpu}; expected a whole number of cores >= 1")
    if not QUANTITY.match(str(memory)):
        fail(f"{key}.memory", f"is {memory!r}; expected a Kubernetes quantity such as 16Gi")
