"""`kubectl apply -k` of each overlay against a real control plane (issue 15).

Per overlay, one cluster: the overlay is applied as written, then with the monitoring
component added the way k8s/README.md says. What the API server decides is checked:
admission (Pod Security "restricted"), defaulting (an apply that is not a no-op means
the manifest differs from what the server stores), field ownership (server-side apply),
and what the controllers do with it (the HPA, the Deployment's rollouts, the scheduler).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster import (
    K8S,
    NAMESPACE,
    Cluster,
    add_cpu_nodes,
    add_models_volume,
    kustomization,
    running_cluster,
)

# Generous: the first test of a module also waits for its cluster to start.
pytestmark = pytest.mark.timeout(300)

# Every namespaced kind the overlays and the monitoring component create.
KINDS = (
    "deployments,services,serviceaccounts,configmaps,persistentvolumeclaims,"
    "poddisruptionbudgets,horizontalpodautoscalers,networkpolicies,"
    "servicemonitors,prometheusrules,scaledobjects"
)
# What a fresh cluster has in the context's namespace before anything is applied.
DEFAULT_NAMESPACE_BASELINE = {
    "service/kubernetes",
    "serviceaccount/default",
    "configmap/kube-root-ca.crt",
}
GPUS_ON_THE_NODE = 2  # == the HPA's minReplicas: the node is full, as in production


@dataclass
class Deployed:
    overlay: str
    cluster: Cluster
    source: Path  # the kustomization applied: the overlay plus the monitoring component
    outputs: list[str] = field(default_factory=list)  # stdout + stderr of each apply
    unschedulable: str = ""  # gpu: the scheduler's message while there was no GPU node


def selector() -> str:
    return "app.kubernetes.io/name=tandem"


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def deployed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    overlay: str = request.param
    with running_cluster(tmp_path_factory.mktemp(f"cluster-{overlay}")) as cluster:
        add_cpu_nodes(cluster, 2)
        if overlay == "gpu":
            add_models_volume(cluster)
        source = kustomization(tmp_path_factory.mktemp("user"), overlay, "monitoring")
        state = Deployed(overlay, cluster, source)
        # As written, then as a user adds the monitoring component.
        for target in (K8S / "overlays" / overlay, source):
            proc = cluster.kubectl("apply", "-k", str(target))
            state.outputs.append(proc.stdout + proc.stderr)
        if overlay == "gpu":
            # No GPU node yet: the pods wait, with the scheduler's reason.
            state.unschedulable = cluster.wait_for(
                "gpu pod unschedulable for want of a GPU node",
                lambda: unschedulable_message(cluster, "node affinity/selector"),
                timeout=90,
            )
            cluster.add_node("gpu-0", zone="zone-a", gpus=GPUS_ON_THE_NODE)
        # Settled before the tests look: the HPA raises the new Deployment (1 replica)
        # to minReplicas, a spec change of its own that no test must mistake for ours.
        cluster.wait_for(
            "the HPA raising the Deployment to minReplicas",
            lambda: cluster.get("deployment", "tandem")["spec"].get("replicas") == 2,
            timeout=60,
        )
        yield state


def unschedulable_message(cluster: Cluster, containing: str = "") -> str | None:
    for pod in cluster.get("pods", namespace=NAMESPACE)["items"]:
        if pod["metadata"]["labels"].get("app.kubernetes.io/name") != "tandem":
            continue
        for condition in pod["status"].get("conditions", []):
            if (
                condition["type"] == "PodScheduled"
                and condition.get("reason") == "Unschedulable"
                and containing in condition["message"]
            ):
                return str(condition["message"])
    return None


def applied_objects(cluster: Cluster, namespace: str) -> set[str]:
    out = cluster.kubectl("get", KINDS, "-n", namespace, "-o", "name").stdout.split()
    # "deployment.apps/tandem" -> "deployment/tandem"
    return {f"{n.split('/')[0].split('.')[0]}/{n.split('/')[1]}" for n in out}


def generations(cluster: Cluster) -> dict[str, int]:
    items = json.loads(cluster.kubectl("get", KINDS, "-n", NAMESPACE, "-o", "json").stdout)
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"].get("generation", 0)
        for o in items["items"]
    }


def test_applies_cleanly_and_everything_lands_in_the_tandem_namespace(deployed: Deployed) -> None:
    cluster = deployed.cluster
    for output in deployed.outputs:
        # Pod Security "warn: restricted" checks the pod templates at apply time.
        assert "Warning" not in output, output
    # The context's namespace ("default") got nothing: the components and the gpu PVC
    # used to land there.
    assert applied_objects(cluster, "default") == DEFAULT_NAMESPACE_BASELINE
    ours = applied_objects(cluster, NAMESPACE)
    expected = {
        "deployment/tandem",
        "deployment/demo-tools",
        "horizontalpodautoscaler/tandem",
        "servicemonitor/tandem",
        "prometheusrule/tandem",
        "networkpolicy/tandem",
        "networkpolicy/demo-tools",
        "poddisruptionbudget/tandem",
    }
    if deployed.overlay == "gpu":
        expected.add("persistentvolumeclaim/tandem-models")
    assert expected <= ours, expected - ours


def test_a_second_apply_is_a_no_op(deployed: Deployed) -> None:
    """The manifests are what the server stores: no field it rewrites ("1000" -> "1k"),
    drops (`egress: []`) or that a controller owns (`replicas`)."""
    cluster = deployed.cluster
    diff = cluster.kubectl("diff", "-k", str(deployed.source), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    before = generations(cluster)
    proc = cluster.kubectl("apply", "-k", str(deployed.source))
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stdout
    # kubectl always sends a PDB's selector (its patch strategy is "replace"), so it says
    # "configured" however equal the object is; the server writes nothing (generation).
    pdb = "poddisruptionbudget.policy/tandem configured"
    assert all(line.endswith(" unchanged") or line == pdb for line in lines), proc.stdout
    assert generations(cluster) == before


def test_pod_security_restricted_is_enforced_by_the_api_server(deployed: Deployed) -> None:
    """The real admission plugin: our pod is admitted without a warning; a pod that
    loosens any of the restricted settings is refused, in our namespace only."""
    cluster = deployed.cluster
    template = cluster.get("deployment", "tandem")["spec"]["template"]

    def pod(mutate: Any = None, namespace: str = NAMESPACE) -> str:
        spec = copy.deepcopy(template["spec"])
        if mutate:
            mutate(spec)
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "admission-check", "namespace": namespace},
                "spec": spec,
            }
        )

    def create(body: str) -> Any:
        return cluster.kubectl("create", "--dry-run=server", "-f", "-", input=body, check=False)

    ours = create(pod())
    assert ours.returncode == 0, ours.stderr
    assert "Warning" not in ours.stderr, ours.stderr

    def brain(spec: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in spec["containers"] if c["name"] == "brain")

    def sidecar(spec: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in spec["initContainers"] if c["name"] == "sidecar")

    def privileged(spec: dict[str, Any]) -> None:
        brain(spec)["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)

    def as_root(spec: dict[str, Any]) -> None:
        spec["securityContext"].update(runAsNonRoot=False, runAsUser=0)
        for c in (brain(spec), sidecar(spec)):
            c["securityContext"].update(runAsNonRoot=False, runAsUser=0)

    def extra_capability(spec: dict[str, Any]) -> None:
        sidecar(spec)["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]

    def no_seccomp(spec: dict[str, Any]) -> None:
        del spec["securityContext"]["seccompProfile"]

    def host_network(spec: dict[str, Any]) -> None:
        spec["hostNetwork"] = True

    for mutate in (privileged, as_root, extra_capability, no_seccomp, host_network):
        refused = create(pod(mutate))
        assert refused.returncode != 0, mutate.__name__
        assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    # The refusal comes from the namespace's label: the same pod is admitted elsewhere.
    def elsewhere(spec: dict[str, Any]) -> None:
        privileged(spec)
        spec["serviceAccountName"] = "default"

    control = create(pod(elsewhere, namespace="default"))
    assert control.returncode == 0, control.stderr


def test_the_deployment_rolls_out_on_kwok_nodes(deployed: Deployed) -> None:
    cluster = deployed.cluster
    if deployed.overlay == "gpu":
        # Without a GPU node the scheduler says why: the nodeSelector (and the taint).
        assert "didn't match Pod's node affinity/selector" in deployed.unschedulable
    for name in ("tandem", "demo-tools"):
        cluster.kubectl("-n", NAMESPACE, "rollout", "status", f"deploy/{name}", "--timeout=120s")
    pods = cluster.get("pods", namespace=NAMESPACE)["items"]
    brains = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/name") == "tandem"]
    assert len(brains) == 2  # minReplicas: the HPA set it (the Deployment has no count)
    for pod in brains:
        spec = pod["spec"]
        # The native sidecar survives admission and defaulting as an init container.
        [sidecar] = spec["initContainers"]
        assert sidecar["name"] == "sidecar"
        assert sidecar["restartPolicy"] == "Always"
        assert [c["name"] for c in spec["containers"]] == ["brain"]
        assert any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"]
        )
        # Probe timeouts are ours, not the server's default of 1 s.
        brain = spec["containers"][0]
        assert brain["livenessProbe"]["timeoutSeconds"] > 1
        if deployed.overlay == "gpu":
            assert spec["nodeName"] == "gpu-0"
            assert brain["image"].endswith("-cuda")
            assert "nvidia.com/gpu" not in sidecar["resources"].get("limits", {})
        else:
            assert spec["nodeName"].startswith("cpu-")
    demo = cluster.get("deployment", "demo-tools")["spec"]["template"]["spec"]["containers"][0]
    assert not demo["image"].endswith("-cuda"), demo["image"]


def test_the_hpa_controller_owns_the_replica_count(deployed: Deployed) -> None:
    """Created without `replicas` (so at 1), the Deployment is raised to minReplicas by
    the real HPA controller; with no metrics API here it then holds the count."""
    cluster = deployed.cluster

    def rescaled() -> str | None:
        events = cluster.get("events", namespace=NAMESPACE)["items"]
        for event in events:
            if event["involvedObject"]["kind"] == "HorizontalPodAutoscaler" and (
                event["reason"] == "SuccessfulRescale"
            ):
                return str(event["message"])
        return None

    message = cluster.wait_for("the HPA rescaling the Deployment", rescaled, timeout=60)
    assert "New size: 2; reason: Current number of replicas below Spec.MinReplicas" in message
    assert cluster.get("deployment", "tandem")["spec"]["replicas"] == 2

    def conditions_written() -> dict[str, Any] | None:
        hpa = cluster.get("hpa", "tandem")
        found = {c["type"]: c for c in hpa["status"].get("conditions", [])}
        return found if {"AbleToScale", "ScalingActive"} <= set(found) else None

    conditions = cluster.wait_for("the HPA's conditions", conditions_written, timeout=60)
    hpa = cluster.get("hpa", "tandem")
    assert hpa["spec"]["metrics"][1]["pods"]["target"]["averageValue"] == "1k"
    assert conditions["AbleToScale"]["status"] == "True"
    # No metrics.k8s.io nor custom.metrics.k8s.io in this cluster: the HPA says so.
    assert conditions["ScalingActive"]["status"] == "False"
    assert conditions["ScalingActive"]["reason"].startswith("FailedGet"), conditions


def test_a_config_change_rolls_out(deployed: Deployed, tmp_path: Path) -> None:
    """A new tools.yaml is a new ConfigMap (hash in the name), so a new pod template. On
    the gpu overlay the GPU node is full: the rollout must replace pods, not surge."""
    cluster = deployed.cluster
    changed = kustomization(
        tmp_path / "changed",
        deployed.overlay,
        "monitoring",
        extra={
            "namespace": NAMESPACE,
            "configMapGenerator": [
                {"name": "tandem-tools", "behavior": "merge", "literals": ["revision=2"]}
            ],
        },
    )
    before = cluster.get("deployment", "tandem")["metadata"]["generation"]
    cluster.kubectl("apply", "-k", str(changed))
    assert cluster.get("deployment", "tandem")["metadata"]["generation"] == before + 1
    rollout = cluster.kubectl(
        "-n", NAMESPACE, "rollout", "status", "deploy/tandem", "--timeout=150s", check=False,
        timeout=170,
    )  # fmt: skip
    assert rollout.returncode == 0, (
        rollout.stdout + rollout.stderr + "\n" + str(unschedulable_message(cluster))
    )
    pods = [
        p
        for p in cluster.get("pods", namespace=NAMESPACE)["items"]
        if p["metadata"]["labels"].get("app.kubernetes.io/name") == "tandem"
        and not p["metadata"].get("deletionTimestamp")
    ]
    volumes = {
        v["configMap"]["name"] for p in pods for v in p["spec"]["volumes"] if "configMap" in v
    }
    assert len(volumes) == 1, volumes
    assert volumes != {"tandem-tools"}, volumes
    # Back to the manifests as written (and the pods to the first ConfigMap).
    cluster.kubectl("apply", "-k", str(deployed.source))
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deploy/tandem", "--timeout=150s",
                    timeout=170)  # fmt: skip


def test_apply_keeps_what_the_hpa_scaled_and_server_side_apply_has_no_conflict(
    deployed: Deployed,
) -> None:
    """The HPA's count survives a re-apply, client-side and server-side (over the
    client-side install, as a user switching to `--server-side` does)."""
    cluster = deployed.cluster
    # What the HPA would do under load (it holds the count here: no metrics API).
    cluster.kubectl("-n", NAMESPACE, "scale", "deploy/tandem", "--replicas=3")
    again = cluster.kubectl("apply", "-k", str(deployed.source))
    assert "deployment.apps/tandem unchanged" in again.stdout, again.stdout
    assert cluster.get("deployment", "tandem")["spec"]["replicas"] == 3
    diff = cluster.kubectl("diff", "-k", str(deployed.source), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    server_side = cluster.kubectl("apply", "--server-side", "-k", str(deployed.source), check=False)
    assert server_side.returncode == 0, server_side.stdout + server_side.stderr
    assert "conflict" not in (server_side.stdout + server_side.stderr).lower()
    assert cluster.get("deployment", "tandem")["spec"]["replicas"] == 3
