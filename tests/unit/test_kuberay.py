"""KubeRay RayJob rendering: every configs/cluster/*.yaml renders a manifest that validates
against the RayJob CRD's own schema (ray.io/v1, KubeRay 1.7.0) and KubeRay's extra checks;
broken manifests are rejected; the worker count agrees with the run's cluster.num_workers."""

from __future__ import annotations

import argparse
import copy
import re
import shlex
from pathlib import Path
from typing import Any, Dict, Iterator, List

import jsonschema
import pytest
import yaml

from compactrec.cluster.cluster_config import load_cluster_config
from compactrec.cluster.kuberay import check_rayjob, job_name, plan_replicas, render_rayjob, to_yaml
from compactrec.cluster.submit import CONFIG_ENV, ENTRYPOINT, add_parser, cluster_run_config, job_spec
from compactrec.trainer.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = sorted((REPO / "configs" / "cluster").glob("*.yaml"))
DEMO = REPO / "configs" / "methods" / "full.yaml"
# The CRD as published by KubeRay (Apache-2.0), ray-operator/config/crd/bases/ at v1.7.0.
CRD_CANDIDATES = [REPO / "tests" / "data" / "kuberay-rayjob-crd.yaml"]
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# ---------------------------------------------------------------- CRD -> JSON Schema


def _convert(node: Any) -> Any:
    """One OpenAPI v3 schema node with Kubernetes extensions -> plain JSON Schema (draft 7).

    - x-kubernetes-int-or-string: integer or string;
    - objects with ``properties`` accept no other key unless x-kubernetes-preserve-unknown-fields
      (the API server prunes unknown fields and ``kubectl apply`` rejects them);
    - format int32/int64: their ranges; ``nullable``: also null;
    - x-kubernetes-list-type set / map (+ list-map-keys): unique items / unique keys;
    - x-kubernetes-validations (CEL): not evaluated here, so a manifest that sets such a
      field is rejected as unchecked rather than passed unseen.
    """
    if not isinstance(node, dict):
        return node
    out: Dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _convert(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_convert(s) for s in value]
        elif key == "x-kubernetes-list-type":
            out["x-list-type"] = value
        elif key == "x-kubernetes-list-map-keys":
            out["x-list-map-keys"] = value
        elif key == "x-kubernetes-validations":
            out["x-cel"] = value
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("format") in INT_RANGE:
        out["minimum"], out["maximum"] = INT_RANGE[node["format"]]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _list_keys(validator, keys: List[str], instance: Any, schema: Dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    if not isinstance(instance, list):
        return
    props = schema.get("items", {}).get("properties", {})
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate list-map key {dict(zip(keys, key))}")
            seen.add(key)


def _list_type(validator, kind: str, instance: Any, schema: Dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    if kind == "set" and isinstance(instance, list):
        as_text = [yaml.safe_dump(i) for i in instance]
        if len(set(as_text)) != len(as_text):
            yield jsonschema.ValidationError("duplicate items in a list of type set")


def _cel(validator, rules: List[Dict[str, str]], instance: Any, schema: Dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    yield jsonschema.ValidationError(f"sets a field guarded by CEL rules this test cannot evaluate: {[r['rule'] for r in rules]}")


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-list-map-keys": _list_keys, "x-list-type": _list_type, "x-cel": _cel}
)
OBJECT_META = {  # the root `metadata` is ObjectMeta, checked by the API server, not the CRD
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Draft7Validator:
    path = next((p for p in CRD_CANDIDATES if p.exists()), None)
    assert path is not None, f"RayJob CRD not found at any of {CRD_CANDIDATES}"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _convert(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": "RayJob"}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    CrdValidator.check_schema(schema)
    return CrdValidator(schema)


def crd_errors(validator: jsonschema.Draft7Validator, manifest: Dict[str, Any]) -> List[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


# ---------------------------------------------------------------- helpers


def _fitting_run(cluster_yaml: Path, *extra: str):
    """The demo run sized to the cluster file: GPU if it has GPUs, num_workers = its capacity."""
    cc = load_cluster_config(cluster_yaml)
    gpu = any(g.gpu for g in cc.worker_groups)
    run = load_config(DEMO, [f"cluster.use_gpu={str(gpu).lower()}", *extra])
    if gpu:  # fixed replicas: fill every GPU
        slots = sum((g.replicas or 0) * min(g.gpu, g.cpu // run.cluster.cpus_per_worker) for g in cc.worker_groups)
        run = load_config(DEMO, ["cluster.use_gpu=true", f"cluster.num_workers={slots}", *extra])
    return cc, run


def _render(cc, run, **kw) -> Dict[str, Any]:
    shipped = cluster_run_config(run, cc.storage.mount_path)
    entrypoint, env = job_spec(shipped, code_dir=None)
    return render_rayjob(cc, shipped.cluster, name=kw.pop("name", "compactrec-demo"), entrypoint=entrypoint,
                         runtime_env=env, metadata={"run": run.name}, **kw)


def _cli(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="compactrec")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


# ---------------------------------------------------------------- the shipped cluster files


def test_cluster_files_exist_cpu_and_gpu():
    names = [p.name for p in CLUSTER_YAML]
    assert len(names) >= 2, names
    gpus = [any(g.gpu for g in load_cluster_config(p).worker_groups) for p in CLUSTER_YAML]
    assert any(gpus) and not all(gpus), "need at least one CPU and one GPU example"


@pytest.mark.parametrize("path", CLUSTER_YAML, ids=lambda p: p.name)
def test_every_cluster_file_renders_a_valid_rayjob(path: Path, crd_validator):
    cc, run = _fitting_run(path)
    manifest = _render(cc, run, where=str(path))
    assert crd_errors(crd_validator, manifest) == []
    text = to_yaml(manifest)  # what `kubectl apply -f` reads: the same object after a round trip
    assert yaml.safe_load(text) == manifest
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["entrypoint"] == ENTRYPOINT
    rc = spec["rayClusterSpec"]
    assert rc["rayVersion"] == cc.ray_version
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == cc.image and head["resources"]["limits"]["memory"] == cc.head.memory
    total = 0
    for group, g in zip(rc["workerGroupSpecs"], cc.worker_groups):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["cpu"] == str(g.cpu) and limits["memory"] == g.memory
        assert limits.get("nvidia.com/gpu", 0) == g.gpu
        per_pod = min(g.gpu, g.cpu // run.cluster.cpus_per_worker) if run.cluster.use_gpu else g.cpu // run.cluster.cpus_per_worker
        total += group["replicas"] * per_pod
    assert total >= run.cluster.num_workers
    # the run travels in the runtime env, with cluster paths and Ray joined from inside the job
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    shipped = yaml.safe_load(env["env_vars"][CONFIG_ENV])
    assert shipped["cluster"]["address"] == "auto"
    assert shipped["cluster"]["num_workers"] == run.cluster.num_workers
    if cc.storage.claim:
        assert shipped["data"]["path"].startswith(cc.storage.mount_path + "/")


def test_gpu_file_is_eight_nodes_of_eight_gpus():
    cc = load_cluster_config(REPO / "configs" / "cluster" / "gpu-8xh100.yaml")
    (g,) = cc.worker_groups
    assert (g.replicas, g.gpu) == (8, 8)
    run = load_config(DEMO, ["cluster.use_gpu=true", "cluster.num_workers=64", "cluster.cpus_per_worker=8"])
    assert plan_replicas(cc, run.cluster, "gpu") == [8]


# ---------------------------------------------------------------- the validator can fail


def _broken(manifest: Dict[str, Any], how: str) -> Dict[str, Any]:
    m = copy.deepcopy(manifest)
    rc = m["spec"]["rayClusterSpec"]
    worker = rc["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    if how == "replicas_not_int":
        worker["replicas"] = "many"
    elif how == "missing_group_name":
        del worker["groupName"]
    elif how == "missing_container_name":
        del container["name"]
    elif how == "unknown_field":
        m["spec"]["shutdownAfterJobFinish"] = True  # a typo kubectl apply would reject
    elif how == "bad_quantity":
        container["resources"]["limits"]["memory"] = "16GB"
    elif how == "bool_as_string":
        m["spec"]["shutdownAfterJobFinishes"] = "yes"
    elif how == "int32_overflow":
        m["spec"]["ttlSecondsAfterFinished"] = 2**31
    elif how == "duplicate_container":
        worker["template"]["spec"]["containers"].append(copy.deepcopy(container))
    elif how == "cel_guarded_field":
        m["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}
    elif how == "wrong_kind":
        m["kind"] = "RayCluster"
    elif how == "missing_head":
        del rc["headGroupSpec"]
    return m


@pytest.mark.parametrize("how,needle", [
    ("replicas_not_int", "workerGroupSpecs.0.replicas: 'many' is not of type 'integer'"),
    ("missing_group_name", "'groupName' is a required property"),
    ("missing_container_name", "containers.0: 'name' is a required property"),
    ("unknown_field", "'shutdownAfterJobFinish' was unexpected"),
    ("bad_quantity", "limits.memory: '16GB' does not match"),
    ("bool_as_string", "'yes' is not of type 'boolean'"),
    ("int32_overflow", "greater than the maximum"),
    ("duplicate_container", "duplicate list-map key {'name': 'ray-worker'}"),
    ("cel_guarded_field", "spec.deletionStrategy: sets a field guarded by CEL rules"),
    ("wrong_kind", "kind: 'RayJob' was expected"),
    ("missing_head", "'headGroupSpec' is a required property"),
])
def test_broken_manifest_is_rejected(how: str, needle: str, crd_validator):
    cc, run = _fitting_run(REPO / "configs" / "cluster" / "cpu.yaml")
    good = _render(cc, run)
    assert crd_errors(crd_validator, good) == []
    errors = crd_errors(crd_validator, _broken(good, how))
    assert any(needle in e for e in errors), f"{how}: {errors or 'accepted'}"


@pytest.mark.parametrize("change,needle", [
    (lambda m: m["metadata"].update(name="x" * 48), "at most 47"),
    (lambda m: m["metadata"].update(name="1-job"), "DNS-1035"),
    (lambda m: m["spec"].update(shutdownAfterJobFinishes=False), "ttlSecondsAfterFinished"),
    (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("minReplicas"), "minReplicas"),
    (lambda m: m["spec"].update(runtimeEnvYAML="a: [1"), "runtimeEnvYAML"),
])
def test_kuberay_operator_checks(change, needle):
    cc, run = _fitting_run(REPO / "configs" / "cluster" / "cpu.yaml")
    m = _render(cc, run)
    change(m)
    with pytest.raises(ValueError, match=needle):
        check_rayjob(m)


# ---------------------------------------------------------------- worker count


def test_unset_replicas_fit_the_run():
    cc = load_cluster_config(REPO / "configs" / "cluster" / "cpu.yaml")  # 4-CPU pods, replicas unset
    for workers, pods in [(1, 1), (4, 1), (5, 2), (12, 3)]:
        run = load_config(DEMO, [f"cluster.num_workers={workers}"])
        assert plan_replicas(cc, run.cluster, "cpu") == [pods]
    run = load_config(DEMO, ["cluster.num_workers=4", "cluster.cpus_per_worker=2"])
    assert plan_replicas(cc, run.cluster, "cpu") == [2]


@pytest.mark.parametrize("overrides,needle", [
    (["cluster.use_gpu=true", "cluster.num_workers=65"], "holds 64 Ray Train workers"),
    (["cluster.use_gpu=true", "cluster.num_workers=56"], "leaving whole pods idle"),
    (["cluster.use_gpu=false", "cluster.num_workers=64"], "cluster.use_gpu=true"),
    (["cluster.use_gpu=true", "cluster.num_workers=64", "cluster.cpus_per_worker=32"], "holds 32"),
])
def test_worker_count_disagreement_is_an_error(overrides, needle):
    cc = load_cluster_config(REPO / "configs" / "cluster" / "gpu-8xh100.yaml")
    run = load_config(DEMO, overrides)
    with pytest.raises(ConfigError, match=needle):
        plan_replicas(cc, run.cluster, "gpu-8xh100.yaml")


# ---------------------------------------------------------------- cluster config schema


@pytest.mark.parametrize("text,needle", [
    ("head:\n  cpus: 4\n", "head.cpus"),
    ("worker_groups:\n  - name: w\n    gpus: 8\n", "gpus"),
    ("worker_groups:\n  - name: w\n    memory: 16GB\n", "worker_groups[0].memory"),
    ("worker_groups:\n  - name: Big_Group\n", "worker_groups[0].name"),
    ("shutdown_after_job_finishes: false\nttl_seconds_after_finished: 60\n", "ttl_seconds_after_finished"),
    ("worker_groups:\n  - name: w\n    replicas: 4\n    max_replicas: 2\n", "replicas"),
    ("worker_groups:\n  - name: w\n    shm: lots\n", "worker_groups[0].shm"),
    ("image_pull_secrets: [Reg_Cred]\n", "image_pull_secrets[0]"),
])
def test_cluster_config_errors_name_key_and_file(tmp_path: Path, text: str, needle: str):
    path = tmp_path / "bad-cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_cluster_config(path)
    assert needle in str(e.value) and "bad-cluster.yaml" in str(e.value)


def test_entrypoint_survives_kuberays_shell_line():
    """KubeRay's submitter runs `bash -c "... ray job submit ... -- <entrypoint> ..."`: shell
    syntax in the entrypoint would run in the submitter pod, not in the job."""
    assert shlex.split(ENTRYPOINT) == ENTRYPOINT.split()
    assert not set("&|;$`'\"<>(){}\\") & set(ENTRYPOINT)


def test_shipped_job_without_its_config_is_a_clear_error(monkeypatch, capsys):
    from compactrec.cluster.submit import run_shipped

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert run_shipped() == 2
    assert CONFIG_ENV in capsys.readouterr().err


def test_job_name_is_a_kuberay_name():
    assert job_name("compactrec-Demo_run.1") == "compactrec-demo-run-1"
    assert job_name("42-" + "x" * 80) == "x" * 47
    assert job_name("---") == "compactrec"


# ---------------------------------------------------------------- the CLI (--k8s)


def test_submit_k8s_writes_a_valid_manifest(tmp_path: Path, crd_validator, capsys):
    out = tmp_path / "job.yaml"
    rc = _cli(["submit", str(DEMO), "--k8s", "--cluster-config", str(REPO / "configs/cluster/cpu.yaml"),
               "--output", str(out), "--image", "example.org/compactrec:abc123", "--name", "Demo Run",
               "trainer.max_steps=7", "cluster.num_workers=6"])
    assert rc == 0
    manifest = yaml.safe_load(out.read_text())
    assert crd_errors(crd_validator, manifest) == []
    assert manifest["metadata"]["name"] == "demo-run"
    rc_spec = manifest["spec"]["rayClusterSpec"]
    assert rc_spec["workerGroupSpecs"][0]["replicas"] == 2  # 6 workers on 4-CPU pods
    assert {c["image"] for g in [rc_spec["headGroupSpec"], *rc_spec["workerGroupSpecs"]]
            for c in g["template"]["spec"]["containers"]} == {"example.org/compactrec:abc123"}
    env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    assert "py_modules" not in env  # on Kubernetes the image carries the code
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text(env["env_vars"][CONFIG_ENV])
    cfg = load_config(shipped)  # the shipped run is a complete, valid run config
    assert cfg.trainer.max_steps == 7 and cfg.cluster.num_workers == 6
    assert cfg.data.path == "/mnt/compactrec/datasets/demo" and cfg.runs_dir == "/mnt/compactrec/runs"
    assert "kubectl apply -f" in capsys.readouterr().err


def test_submit_k8s_to_stdout_and_overrides_after_options(capsys):
    rc = _cli(["submit", str(DEMO), "--k8s", "--cluster-config", str(REPO / "configs/cluster/cpu.yaml"),
               "trainer.max_steps=3", "--remote-dir", "/data", "data.path=s3://bucket/criteo"])
    assert rc == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    shipped = yaml.safe_load(yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["env_vars"][CONFIG_ENV])
    assert shipped["trainer"]["max_steps"] == 3
    assert shipped["data"]["path"] == "s3://bucket/criteo" and shipped["runs_dir"] == "/data/runs"
    assert manifest["spec"]["metadata"]["compactrec_overrides"] == "trainer.max_steps=3 data.path=s3://bucket/criteo"


@pytest.mark.parametrize("argv,needle", [
    (["--k8s"], "--cluster-config"),
    (["--k8s", "--follow", "--cluster-config", "configs/cluster/cpu.yaml"], "--follow"),
    (["--image", "x"], "go with --k8s"),
    (["--k8s", "--cluster-config", "configs/cluster/cpu.yaml", "runs_dir=s3://b/runs"], "runs_dir"),
])
def test_submit_argument_errors(argv, needle, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=needle):
        _cli(["submit", str(DEMO), *argv])


def test_submit_without_an_address_is_an_error(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="--address"):
        _cli(["submit", str(DEMO)])


# ---------------------------------------------------------------- /dev/shm, pull secrets, pod patches, names


def _volumes(template: Dict[str, Any]) -> Dict[str, Any]:
    spec = template["spec"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0].get("volumeMounts", [])}
    return {v["name"]: (mounts.get(v["name"]), v) for v in spec.get("volumes", [])}


def test_gpu_pods_get_an_in_memory_dev_shm(crd_validator):
    cc, run = _fitting_run(REPO / "configs" / "cluster" / "gpu-8xh100.yaml")
    manifest = _render(cc, run)
    assert crd_errors(crd_validator, manifest) == []
    rc = manifest["spec"]["rayClusterSpec"]
    (worker,) = rc["workerGroupSpecs"]
    path, volume = _volumes(worker["template"])["dshm"]
    assert path == "/dev/shm" and volume["emptyDir"] == {"medium": "Memory"}
    assert "dshm" not in _volumes(rc["headGroupSpec"]["template"])  # the CPU-only head keeps the default
    cpu_cc, cpu_run = _fitting_run(REPO / "configs" / "cluster" / "cpu.yaml")
    cpu = _render(cpu_cc, cpu_run)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert "dshm" not in _volumes(cpu["template"])


def test_pull_secrets_and_pod_patches(tmp_path: Path, crd_validator):
    path = tmp_path / "private.yaml"
    path.write_text(
        "image: registry.internal/compactrec:1\n"
        "image_pull_secrets: [regcred]\n"
        "pod_patch:\n"
        "  metadata: {annotations: {team: recsys}}\n"
        "  spec: {priorityClassName: training}\n"
        "head: {shm: 2Gi}\n"
        "worker_groups:\n"
        "  - name: w\n"
        "    pod_patch:\n"
        "      spec:\n"
        "        containers: [{name: ray-worker, securityContext: {capabilities: {add: [IPC_LOCK]}}}]\n"
        "        priorityClassName: null\n"
    )
    cc = load_cluster_config(path)
    run = load_config(DEMO, ["cluster.num_workers=4"])
    manifest = _render(cc, run)
    assert crd_errors(crd_validator, manifest) == []
    spec = manifest["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    for pod in (head, worker, spec["submitterPodTemplate"]):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["submitterPodTemplate"]["spec"]["containers"][0]["image"] == "registry.internal/compactrec:1"
    assert head["metadata"]["annotations"] == {"team": "recsys"} == worker["metadata"]["annotations"]
    assert head["spec"]["priorityClassName"] == "training" and "priorityClassName" not in worker["spec"]  # null deletes
    (container,) = worker["spec"]["containers"]  # merged by name: the rendered container, patched
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"] and container["image"] == cc.image
    assert _volumes(head)["dshm"][1]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_merge_patch_follows_rfc_7386_and_merges_named_lists():
    from compactrec.cluster.pod_patch import merge_patch

    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "named": [{"name": "x", "v": 1}, {"name": "y", "v": 2}]}
    patch = {"a": {"b": None, "d": 3}, "l": [3], "named": [{"name": "y", "v": 20}, {"name": "z", "v": 3}]}
    assert merge_patch(target, patch) == {
        "a": {"c": 2, "d": 3}, "l": [3],
        "named": [{"name": "x", "v": 1}, {"name": "y", "v": 20}, {"name": "z", "v": 3}],
    }
    assert target["a"] == {"b": 1, "c": 2}  # inputs untouched


def test_default_job_names_are_unique_and_the_manifest_holds_no_local_path(tmp_path: Path, capsys):
    config = tmp_path / "private-folder" / "my-run.yaml"
    config.parent.mkdir()
    config.write_text(DEMO.read_text())
    names, texts = [], []
    for _ in range(2):
        assert _cli(["submit", str(config), "--k8s", "--cluster-config", str(REPO / "configs/cluster/cpu.yaml")]) == 0
        text = capsys.readouterr().out
        names.append(yaml.safe_load(text)["metadata"]["name"])
        texts.append(text)
    assert names[0] != names[1] and all(re.fullmatch(r"compactrec-full-[0-9a-f]{5}", n) for n in names), names
    for text in texts:
        assert str(tmp_path) not in text and str(REPO) not in text and "private-folder" not in text
        assert yaml.safe_load(text)["spec"]["metadata"]["compactrec_config"] == "my-run.yaml"


def test_job_name_unique_stays_a_kuberay_name():
    name = job_name("compactrec-" + "x" * 80, unique=True)
    assert len(name) == 47 and DNS1035.match(name)
