"""
The Kubernetes manifests: both overlays render, every object is valid against the Kubernetes and
KubeRay schemas, and they have the properties the operator's guide promises (GPU requests,
non-root pods, probes, Redis reachable only by the pipeline and the alert consumers, a
configuration the CLI accepts, a RayJob entrypoint the CLI parses, a schedule that never overlaps).
"""

from __future__ import annotations

import re
import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from k8s_render import K8S, REPO, describe, find, parse_cli, pod_specs, render, validate
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import load_config

Objects = list[dict[str, Any]]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def all_pods(objects: Objects, rayjob: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [pod for obj in [*objects, rayjob] for pod in pod_specs(obj)]


# ------------------------------------------------------------------------------------ validation


def test_every_object_is_valid(objects: Objects, rayjob: dict[str, Any], need_crds: Path) -> None:
    errors = [line for obj in [*objects, rayjob] for line in validate(obj)]
    assert errors == []


def test_overlay_makes_the_expected_objects(overlay: str, objects: Objects) -> None:
    for kind, name in [
        ("Namespace", "skyblink-dev" if overlay == "dev" else "skyblink"),
        ("RayCluster", "skyblink"),
        ("CronJob", "skyblink-nightly"),
        ("ConfigMap", "skyblink-config"),
        ("ConfigMap", "skyblink-nightly"),
        ("Service", "skyblink-ray-dashboard"),
        ("StatefulSet", "skyblink-redis"),
        ("Service", "skyblink-redis"),
        ("NetworkPolicy", "skyblink-redis"),
        ("PersistentVolumeClaim", "skyblink-data"),
        ("PersistentVolumeClaim", "skyblink-engines"),
        ("ServiceAccount", "skyblink-ray"),
        ("Role", "skyblink-nightly"),
        ("RoleBinding", "skyblink-nightly"),
    ]:
        find(objects, kind, name)
    # A night is a RayJob created by the schedule, never by `kubectl apply`.
    assert not [o for o in objects if o["kind"] == "RayJob"]
    namespace = find(objects, "Namespace")["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {namespace}


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        # A wrong type in a custom resource: caught by the KubeRay CRD schema.
        ("base/raycluster.yaml", "maxReplicas: 1\n", 'maxReplicas: "one"\n', "workerGroupSpecs.0.maxReplicas"),
        # A misspelt field of a core object: caught by strict validation, as kubectl apply would.
        ("base/nightly/cronjob.yaml", "concurrencyPolicy: Forbid", "concurencyPolicy: Forbid", "concurencyPolicy"),
        # A wrong type in a core object.
        ("redis/service.yaml", "port: 6379", "port: redis", "spec.ports.0.port"),
        # A field of the pod spec in the wrong place inside a RayCluster's pod template.
        ("base/raycluster.yaml", "      minReplicas: 1\n", "      minReplicas: 1\n      tolerations: []\n", "tolerations"),
    ],
)
def test_a_broken_manifest_is_caught(tmp_path: Path, need_crds: Path, file: str, old: str, new: str, expected: str) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    path = tree / file
    text = path.read_text()
    assert old in text, f"the test's anchor {old!r} is no longer in {file}"
    path.write_text(text.replace(old, new, 1))
    errors = [line for obj in render(tree / "overlays" / "dev") for line in validate(obj)]
    assert any(expected in line for line in errors), errors


# ------------------------------------------------------------------------------------------ GPUs


def test_gpu_workers_request_gpus_on_gpu_nodes(overlay: str, objects: Objects) -> None:
    cluster = find(objects, "RayCluster")
    groups = cluster["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["gpu"]
    group = groups[0]
    spec = group["template"]["spec"]
    for container in containers(spec):
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1", container["name"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"], f"{container['name']}: memory must be guaranteed"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    shm = {v["name"]: v for v in spec["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    worker = next(c for c in spec["containers"] if c["name"] == "ray-worker")
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
    # The head drives and serves the dashboard; it never takes a GPU.
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0]["resources"])
    if overlay == "dev":
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
        assert not cluster["spec"].get("enableInTreeAutoscaling")
    else:
        assert cluster["spec"]["enableInTreeAutoscaling"] is True
        assert 1 <= group["minReplicas"] <= group["replicas"] < group["maxReplicas"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        # The autoscaler sidecar needs the head's service account token: it alone mounts it.
        assert head["template"]["spec"]["automountServiceAccountToken"] is False
        assert cluster["spec"]["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False


def test_engines_init_step_runs_before_the_worker_on_the_engines_volume(objects: Objects) -> None:
    spec = find(objects, "RayCluster")["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["skyblink-engines-init"]
    worker = next(c for c in spec["containers"] if c["name"] == "ray-worker")
    assert init["image"] == worker["image"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert mounts["engines"] == {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}["engines"]
    claim = {v["name"]: v for v in spec["volumes"]}["engines"]["persistentVolumeClaim"]["claimName"]
    find(objects, "PersistentVolumeClaim", claim)


# -------------------------------------------------------------------------------------- security


def test_every_pod_runs_non_root_without_privileges(objects: Objects, rayjob: dict[str, Any]) -> None:
    pods = all_pods(objects, rayjob)
    assert len(pods) >= 5  # head, GPU workers, Redis, the nightly submitter, the RayJob's submitter
    for where, _, spec in pods:
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        for container in containers(spec):
            security = {**pod_security, **container.get("securityContext", {})}
            name = f"{where} container {container['name']}"
            assert security.get("runAsNonRoot") is True, name
            assert security.get("runAsUser", 0) != 0, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("privileged") is not True, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not security.get("capabilities", {}).get("add"), name
    namespace = find(objects, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_only_the_autoscaler_and_the_submitter_hold_a_kubernetes_token(overlay: str, objects: Objects, rayjob: dict[str, Any]) -> None:
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    for where, _, spec in all_pods(objects, rayjob):
        if spec.get("serviceAccountName") == "skyblink-nightly":
            continue  # the submitter creates RayJobs (Role skyblink-nightly)
        assert spec.get("automountServiceAccountToken") is False, where
        projected = {v["name"] for v in spec.get("volumes", []) if any("serviceAccountToken" in src
                                                                         for src in v.get("projected", {}).get("sources", []))}
        for container in containers(spec):  # no container of ours mounts a token by hand either
            assert not {m["name"] for m in container.get("volumeMounts", [])} & projected, f"{where} {container['name']}"
            assert all(m["mountPath"] != token_dir for m in container.get("volumeMounts", [])), where
    cluster = find(objects, "RayCluster")
    autoscaler = cluster["spec"].get("autoscalerOptions")
    if overlay == "prod":  # the autoscaler sidecar alone gets the head's token, through its own mount
        [mount] = autoscaler["volumeMounts"]
        assert mount["mountPath"] == token_dir and mount["readOnly"] is True
        head_volumes = {v["name"]: v for v in cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]}
        assert "serviceAccountToken" in str(head_volumes[mount["name"]]["projected"])
    else:
        assert autoscaler is None


def test_every_container_has_a_read_only_root_filesystem(objects: Objects, rayjob: dict[str, Any]) -> None:
    for where, _, spec in all_pods(objects, rayjob):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(spec):
            name = f"{where} container {container['name']}"
            assert container.get("securityContext", {}).get("readOnlyRootFilesystem") is True, name
            for mount in container.get("volumeMounts", []):  # where it writes is a volume, never the image
                if mount["mountPath"] in ("/tmp", "/home/skyblink"):
                    assert "emptyDir" in volumes[mount["name"]], name
            if container["name"] in ("ray-head", "ray-worker", "engines-init", "ray-job-submitter"):
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, f"{name}: no writable /tmp"
    autoscaler = find(objects, "RayCluster")["spec"].get("autoscalerOptions")
    if autoscaler is not None:
        assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True


def test_ray_token_authentication_is_on_for_the_cluster_and_its_submitter(overlay: str, objects: Objects, rayjob: dict[str, Any]) -> None:
    cluster = find(objects, "RayCluster")
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    major, minor, *_ = (int(v) for v in cluster["spec"]["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # Ray's token authentication
    submitter = rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}
    if overlay == "dev":
        assert "auth_token" in find(objects, "Secret", auth["secretName"])["data"]


RAY_HEAD_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}


def test_the_ray_head_takes_dashboard_and_client_connections_only_from_the_submitter_and_operators(
    objects: Objects, rayjob: dict[str, Any]
) -> None:
    cluster = find(objects, "RayCluster")
    head_spec = cluster["spec"]["headGroupSpec"]["template"]
    head_labels = head_spec["metadata"]["labels"]
    assert {p["name"]: p["containerPort"] for p in head_spec["spec"]["containers"][0]["ports"]} == RAY_HEAD_PORTS
    policies = [o for o in objects if o["kind"] == "NetworkPolicy" and selects(o["spec"]["podSelector"], head_labels)]
    assert {p["metadata"]["name"] for p in policies} == {"skyblink-ray-head", "skyblink-ray"}

    def reaches(labels: dict[str, str], namespace: dict[str, str] | None, port: int) -> bool:
        return any(admitted(p, labels, namespace, port) for p in policies)  # policies add up

    submitter = rayjob["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    operator = {"app.kubernetes.io/name": "kubectl", "skyblink.io/role": "operator"}
    kuberay = {"app.kubernetes.io/name": "kuberay-operator"}
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    nightly = find(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    consumer = {"app.kubernetes.io/name": "my-broker", "skyblink.io/role": "alert-consumer"}
    redis = find(objects, "StatefulSet", "skyblink-redis")["spec"]["template"]["metadata"]["labels"]
    for port in (8265, 10001):
        assert reaches(submitter, None, port) and reaches(operator, None, port)
        assert reaches(operator, {"skyblink.io/operators": "true"}, port)
        assert reaches(kuberay, {"skyblink.io/kuberay-operator": "true"}, port)
        for outsider, ns in ((consumer, None), (redis, None), (nightly, None), ({}, None), (operator, {"team": "x"}),
                             (kuberay, None), (submitter, {"kubernetes.io/metadata.name": "elsewhere"})):
            assert not reaches(outsider, ns, port), (outsider, ns, port)
    for port in RAY_HEAD_PORTS.values():
        assert reaches(worker, None, port) and reaches(head_labels, None, port)  # Ray's own traffic
    for outsider in (submitter, operator, consumer, redis, nightly, {}):
        assert not reaches(outsider, None, 6379), outsider  # the GCS: Ray pods only
    assert reaches({}, {"skyblink.io/monitoring": "true"}, 8080) and not reaches({}, {"skyblink.io/monitoring": "true"}, 8265)
    # The GPU workers are closed the same way.
    assert all(selects(p["spec"]["podSelector"], worker) for p in policies if p["metadata"]["name"] == "skyblink-ray")
    assert not any(admitted(p, consumer, None, 10001) for p in objects if p["kind"] == "NetworkPolicy"
                   and selects(p["spec"]["podSelector"], worker))


def test_long_running_containers_have_probes(objects: Objects) -> None:
    for obj in objects:
        if obj["kind"] not in ("RayCluster", "StatefulSet", "Deployment"):
            continue
        for where, _, spec in pod_specs(obj):
            for container in spec["containers"]:
                for probe in ("readinessProbe", "livenessProbe"):
                    assert probe in container, f"{where} container {container['name']} lacks a {probe}"
                    action = container[probe]
                    port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                    declared = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in container.get("ports", [])}
                    assert port is None or port in declared or port == 52365, f"{where}: {probe} port {port}"  # 52365: Ray's agent


# ---------------------------------------------------------------------------------------- Redis


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def admitted(policy: dict[str, Any], pod: dict[str, str], namespace: dict[str, str] | None, port: int) -> bool:
    """Whether ``policy`` lets a pod (labels; namespace labels, None for the policy's own) in on ``port``."""
    for rule in policy["spec"].get("ingress", []):
        if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
            continue
        for peer in rule.get("from", []):
            if "ipBlock" in peer:
                return True
            if namespace is None:  # the policy's own namespace (labelled with neither selector's labels)
                ns_ok = "namespaceSelector" not in peer
            else:
                ns_ok = "namespaceSelector" in peer and selects(peer["namespaceSelector"], namespace)
            pod_ok = selects(peer.get("podSelector", {}), pod)
            if ns_ok and pod_ok:
                return True
    return False


def test_only_the_pipeline_and_alert_consumers_reach_redis(objects: Objects) -> None:
    policy = find(objects, "NetworkPolicy", "skyblink-redis")
    redis = find(objects, "StatefulSet", "skyblink-redis")
    assert selects(policy["spec"]["podSelector"], redis["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    service = find(objects, "Service", "skyblink-redis")
    assert selects({"matchLabels": service["spec"]["selector"]}, redis["spec"]["template"]["metadata"]["labels"])

    cluster = find(objects, "RayCluster")
    for where, meta, _ in pod_specs(cluster):
        assert admitted(policy, meta["labels"], None, 6379), f"the pipeline ({where}) cannot reach Redis"
    consumer = {"app.kubernetes.io/name": "my-broker", "skyblink.io/role": "alert-consumer"}
    assert admitted(policy, consumer, None, 6379)
    assert admitted(policy, consumer, {"skyblink.io/alert-consumers": "true"}, 6379)
    assert not admitted(policy, consumer, {"kubernetes.io/metadata.name": "elsewhere"}, 6379)
    assert not admitted(policy, {"skyblink.io/role": "pipeline"}, {"skyblink.io/alert-consumers": "true"}, 6379)
    assert not admitted(policy, consumer, None, 6380)
    nightly = find(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    for labels in ({}, {"app.kubernetes.io/name": "skyblink"}, nightly, {"skyblink.io/role": "admin"}):
        assert not admitted(policy, labels, None, 6379), labels


def test_redis_persists_and_authenticates_from_the_secret(objects: Objects) -> None:
    redis = find(objects, "StatefulSet", "skyblink-redis")
    spec = redis["spec"]["template"]["spec"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (server,) = spec["containers"]
    assert {"name": "data", "mountPath": "/data"} in server["volumeMounts"]
    conf = find(objects, "ConfigMap", "skyblink-redis-conf")["data"]["redis.conf"]
    assert "appendonly yes" in conf and "dir /data" in conf and "aclfile /run/redis/users.acl" in conf
    assert "requirepass" not in conf
    expected = {"auth": ["password", "publisher-password", "consumer-password"], "redis": ["password"]}
    for container in containers(spec):
        assert "requirepass" not in " ".join(container.get("args", [])), "the password must not be on a command line"
        refs = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        assert refs == [{"name": "skyblink-redis", "key": k} for k in expected[container["name"]]], container["name"]


def test_the_pipeline_publishes_as_an_acl_user_that_cannot_flush(objects: Objects) -> None:
    """The ACL users themselves run against a real redis-server in test_redis_acl.py."""
    acl = find(objects, "ConfigMap", "skyblink-redis-conf")["data"]["users.acl"]
    users = {line.split()[1]: line.split()[2:] for line in acl.splitlines() if line.startswith("user ")}
    assert set(users) == {"default", "skyblink-publisher", "skyblink-consumer"}
    for name in ("skyblink-publisher", "skyblink-consumer"):
        rules = users[name]
        assert rules[:2] == ["on", "#@" + name.split("-")[1].upper() + "_HASH@"], name  # a hash, filled in at start
        assert "-@all" in rules and "+@all" not in rules and not any("flush" in r.lower() for r in rules), name
        assert {r for r in rules if r.startswith("~")} == {"~skyblink:alerts:*", "~{skyblink:alerts:*"}, name
    assert {"+xadd", "+evalsha"} <= set(users["skyblink-publisher"])
    assert {"+xreadgroup", "+xack", "+xautoclaim"} <= set(users["skyblink-consumer"])
    assert "+xadd" not in users["skyblink-consumer"] and "(~skyblink:alerts:*:dead" in users["skyblink-consumer"]
    for _, _, spec in pod_specs(find(objects, "RayCluster")):
        for container in spec["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["SKYBLINK_REDIS__USERNAME"]["value"] == "skyblink-publisher"
            assert env["SKYBLINK_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "skyblink-redis", "key": "publisher-password"}


def test_every_reference_resolves(overlay: str, objects: Objects, rayjob: dict[str, Any]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    claim_templates = {
        t["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet" for t in o["spec"].get("volumeClaimTemplates", [])
    }
    for where, _, spec in all_pods(objects, rayjob):
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, where
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, where
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in names, where
        for container in containers(spec):
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"] for v in spec.get("volumes", [])} | (claim_templates if where.startswith("StatefulSet/") else set())
            assert mounts <= volumes, f"{where} {container['name']}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ("Secret", ref["name"]) not in names:
                    # prod: made by the operator before `kubectl apply -k` (docs/operations.md says how)
                    assert overlay == "prod" and ref["name"] in ("skyblink-redis", "skyblink-ray-auth"), f"{where}: Secret {ref['name']}"
    secret = find(objects, "RayCluster")["spec"]["authOptions"]["secretName"]
    assert ("Secret", secret) in names or overlay == "prod"
    guide = (REPO / "docs" / "operations.md").read_text()
    assert "kubectl -n skyblink create secret generic skyblink-redis" in guide
    assert "--from-literal=publisher-password=" in guide and "--from-literal=consumer-password=" in guide
    assert f"kubectl -n skyblink create secret generic {secret}" in guide


# -------------------------------------------------------------------------------- configuration


def pod_environment(objects: Objects) -> dict[str, str]:
    """The SKYBLINK_* variables the Ray pods set (secret values replaced by a stand-in)."""
    env: dict[str, str] = {}
    for _, _, spec in pod_specs(find(objects, "RayCluster")):
        for container in containers(spec):
            for var in container.get("env", []):
                env[var["name"]] = var.get("value", "stand-in-secret")
    return env


def test_the_configmap_holds_a_file_the_cli_accepts(objects: Objects, tmp_path: Path) -> None:
    data = find(objects, "ConfigMap", "skyblink-config")["data"]
    assert list(data) == ["skyblink.toml"]
    path = tmp_path / "skyblink.toml"
    path.write_text(data["skyblink.toml"])
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 0, result.output

    env = pod_environment(objects)
    assert env["SKYBLINK_CONFIG"] == "/etc/skyblink/skyblink.toml"
    config = load_config(path, environ={k: v for k, v in env.items() if k != "SKYBLINK_CONFIG"})
    assert config.redis.password is not None and config.redis.password.get_secret_value() == "stand-in-secret"
    assert config.ray.address == "auto"
    # The GPU workers take a whole 4096^2 CCD of 1024^2 tiles a call, in full device batches.
    assert config.night.units_per_call >= 16 and config.night.units_per_call % config.night.device_batch == 0
    # The bundled Redis is where the configuration says.
    url = urlsplit(config.redis.url or "")
    service = find(objects, "Service", "skyblink-redis")
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    # The paths the configuration names are volumes of the pods that use them.
    cluster = find(objects, "RayCluster")
    for where, _, spec in pod_specs(cluster):
        mounts = {m["mountPath"]: m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/etc/skyblink"]]["configMap"]["name"] == "skyblink-config", where
        assert config.store.startswith("/data/") and "/data" in mounts, where
        assert str(config.alerts.spool_dir).startswith("/data/"), where
        if "gpu" in where:
            assert mounts[config.engines.registry] == "engines", where


def test_the_rayjob_runs_a_night_the_cli_parses(objects: Objects, rayjob: dict[str, Any]) -> None:
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["skyblink", "night", "run"]
    params = parse_cli(argv)
    assert str(params["night_dir"]) == "/data/nights/20261125"
    assert params["ray_address"] == "auto"  # join the cluster the job runs on
    assert rayjob["metadata"]["name"] == "skyblink-night-20261125"
    cluster = find(objects, "RayCluster")
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes")
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert submitter["image"] == cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def test_the_nightly_schedule_never_overlaps(objects: Objects, rayjob: dict[str, Any], nightly: ModuleType) -> None:
    cron = find(objects, "CronJob", "skyblink-nightly")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    ZoneInfo(spec["timeZone"])  # a real IANA zone
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    # The submitter waits for the RayJob, so its Job lasts as long as the night: Forbid then
    # holds the next night back while one is still running.
    assert job["activeDeadlineSeconds"] > rayjob["spec"]["activeDeadlineSeconds"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "submit", "operator": "In", "values": [nightly.EXIT_NIGHT_FAILED]}} in job["podFailurePolicy"]["rules"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "submit" and container["command"] == ["skyblink-nightly"]
    args = nightly.parse_args(container["args"])
    assert args.time_zone == spec["timeZone"], "the night's date and the schedule must use one time zone"
    assert args.cluster == find(objects, "RayCluster")["metadata"]["name"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(args.template.parent)]]
    template = find(objects, "ConfigMap", "skyblink-nightly")
    assert volume["configMap"]["name"] == template["metadata"]["name"] and args.template.name in template["data"]
    # What the submitter may do, and no more.
    role = find(objects, "Role", "skyblink-nightly")
    assert {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"]} == {("rayjobs", ("get", "create")), ("rayclusters", ("get",))}
    binding = find(objects, "RoleBinding", "skyblink-nightly")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": cron["metadata"]["namespace"]}]


def test_the_dashboard_service_selects_the_head(objects: Objects) -> None:
    service = find(objects, "Service", "skyblink-ray-dashboard")
    assert service["spec"]["selector"] == {"ray.io/cluster": find(objects, "RayCluster")["metadata"]["name"], "ray.io/node-type": "head"}
    assert service["spec"]["type"] == "ClusterIP"  # reached by port-forward or an authenticated Ingress
    assert [p["port"] for p in service["spec"]["ports"]] == [8265]
    head = find(objects, "RayCluster")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_images_are_pinned(overlay: str, objects: Objects, rayjob: dict[str, Any]) -> None:
    for where, _, spec in all_pods(objects, rayjob):
        for container in containers(spec):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: {image}"
            if overlay == "prod":  # a tag can be moved to other bytes; a digest cannot
                assert re.fullmatch(r"[a-z0-9./-]+@sha256:[0-9a-f]{64}", image), f"{where}: {image} is not pinned by digest"


# ------------------------------------------------------------------------------ external Redis


def test_an_external_redis_is_configuration_only(tmp_path: Path, need_crds: Path) -> None:
    """The guide's recipe: leave ../../redis out, point redis.url at the external server."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    prod = tree / "overlays" / "prod"
    kustomization = (prod / "kustomization.yaml").read_text()
    line = next(line for line in kustomization.splitlines() if line.strip().startswith("- ../../redis"))
    (prod / "kustomization.yaml").write_text(kustomization.replace(line + "\n", ""))
    toml = (prod / "skyblink.toml").read_text()
    old = next(line for line in toml.splitlines() if line.startswith("url = "))
    (prod / "skyblink.toml").write_text(toml.replace(old, 'url = "rediss://alerts-redis.example.org:6380/0"'))
    objects = render(prod)
    assert not [o for o in objects if o["kind"] == "StatefulSet" or o["metadata"]["name"] == "skyblink-redis"]
    assert [line for obj in objects for line in validate(obj)] == []
    path = tmp_path / "skyblink.toml"
    path.write_text(find(objects, "ConfigMap", "skyblink-config")["data"]["skyblink.toml"])
    assert load_config(path, environ={}).redis.url == "rediss://alerts-redis.example.org:6380/0"


# ------------------------------------------------------------------------------ the submitter


def test_the_submitter_names_the_night_in_the_observatory_zone(nightly: ModuleType) -> None:
    # 07:30 in Chile on 26 November is the morning after the night of the 25th.
    morning = datetime(2026, 11, 26, 7, 30, tzinfo=ZoneInfo("America/Santiago"))
    assert nightly.night_of(morning.astimezone(UTC), "America/Santiago") == "20261125"
    # The same instant is already the afternoon of the 26th in Tokyo.
    assert nightly.night_of(morning, "Asia/Tokyo") == "20261126"


def test_the_submitter_fills_the_template_or_refuses(objects: Objects, nightly: ModuleType) -> None:
    template = find(objects, "ConfigMap", "skyblink-nightly")["data"]["rayjob.yaml"]
    with pytest.raises(ValueError, match="YYYYMMDD"):
        nightly.render_rayjob(template, night="2026-11-25", namespace="ns", head_image="img:1")
    with pytest.raises(KeyError):
        nightly.render_rayjob(template + "\n# ${TYPO}\n", night="20261125", namespace="ns", head_image="img:1")
    assert nightly.outcome({"status": {"jobDeploymentStatus": "Running"}}) is None
    assert nightly.outcome({}) is None
    assert nightly.outcome({"status": {"jobDeploymentStatus": "Complete"}}) == nightly.EXIT_OK
    assert nightly.outcome({"status": {"jobDeploymentStatus": "Failed"}}) == nightly.EXIT_NIGHT_FAILED


def test_describe_names_kind_and_name() -> None:
    assert describe({"kind": "Service", "metadata": {"name": "a"}}) == "Service/a"
