"""Offline checks of what `kubectl apply -k` would deploy, and of the container images.

No cluster and no Docker engine here: the overlays are rendered with kustomize, validated
against the Kubernetes 1.29-1.33 schemas (kubernetes-validate, strict), held to the
policies below, and the Dockerfiles are checked against the code they package. The test
that the manifest runs as written is in test_k8s_pod.py.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from k8s_render import (
    K8S,
    REPO,
    container,
    find,
    pod_containers,
    render,
    render_in_overlay,
    render_with_components,
)

from harness import sidecar_binary

KUBERNETES_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
OVERLAYS = ["cpu", "gpu"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_overlays_validate_strictly(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    _, objects = rendered
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_a_typo() -> None:
    deployment = find(render("cpu"), "Deployment", "tandem")
    container(deployment, "brain")["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33.0", strict=True)


def test_every_container_meets_the_restricted_standard(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int)
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in pod_containers(deployment):
            sc = c["securityContext"]
            where = f"{deployment['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert isinstance(sc["runAsUser"], int), where
            assert sc["runAsUser"] > 0, where
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert {"cpu", "memory"} <= set(resources["limits"]), where
            for probe in ("readinessProbe", "livenessProbe"):
                spec = c[probe]
                port = (spec.get("grpc") or spec.get("httpGet"))["port"]
                assert isinstance(port, int), f"{where} {probe} must use a numeric port"
    namespace = find(objects, "Namespace", "tandem")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_probe_has_a_deliberate_timeout(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The API server fills in `timeoutSeconds: 1` otherwise: tight for a brain whose
    event loop is busy with thousands of runs (issue 15)."""
    _, objects = rendered
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for c in pod_containers(deployment):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in c:
                    continue
                spec = c[probe]
                where = f"{deployment['metadata']['name']}/{c['name']} {probe}"
                assert "timeoutSeconds" in spec, f"{where}: timeoutSeconds left to the default"
                assert spec["timeoutSeconds"] <= spec.get("periodSeconds", 10), where
    brain = container(find(objects, "Deployment", "tandem"), "brain")
    assert brain["livenessProbe"]["timeoutSeconds"] >= 5


CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_lands_in_the_tandem_namespace(tmp_path: Path, overlay: str) -> None:
    """Whatever the kubectl context's namespace: the overlay's own objects (the gpu PVC)
    and the optional components too (issue 15: they landed in the context's)."""
    for objects in (
        render(overlay),
        render_with_components(tmp_path / "with-components", overlay, "monitoring", "keda"),
        render_in_overlay(tmp_path / "in-overlay", overlay, "monitoring", "keda"),
    ):
        for obj in objects:
            if obj["kind"] in CLUSTER_SCOPED:
                continue
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert obj["metadata"].get("namespace") == "tandem", where


def empty_lists(value: Any, path: str = "") -> list[str]:
    if isinstance(value, list):
        if not value:
            return [path]
        return [p for i, v in enumerate(value) for p in empty_lists(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_lists(v, f"{path}.{k}")]
    return []


def test_no_empty_lists_that_the_server_would_drop(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """The API server drops an empty list (`egress: []` in a NetworkPolicy), so the
    object as stored never equals the manifest: every apply bumps its generation and
    `kubectl diff` always differs. Omit the field instead (issue 15)."""
    _, objects = rendered
    for obj in objects:
        assert not empty_lists(obj), f"{obj['kind']}/{obj['metadata']['name']}"
    denied = find(objects, "NetworkPolicy", "demo-tools")["spec"]
    assert "Egress" in denied["policyTypes"]
    assert "egress" not in denied  # Egress listed, no rule: no egress at all


def test_the_scaler_owns_the_replica_count(tmp_path: Path) -> None:
    """A `replicas` in the Deployment would undo, on every apply, what the HPA scaled to."""
    for objects in (render("cpu"), render("gpu"), render_with_components(tmp_path, "cpu", "keda")):
        assert "replicas" not in find(objects, "Deployment", "tandem")["spec"]


def test_the_sidecar_is_a_native_sidecar_on_a_shared_socket(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    deployment = find(objects, "Deployment", "tandem")
    pod = deployment["spec"]["template"]["spec"]
    sidecar = container(deployment, "sidecar")
    brain = container(deployment, "brain")
    assert sidecar in pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["grpc"]["port"] == 8081
    socket_arg = next(a for a in sidecar["args"] if a.startswith("--listen=unix:"))
    socket_path = socket_arg.removeprefix("--listen=unix:")
    frames_arg = next(a for a in sidecar["args"] if a.startswith("--listen=frames:"))
    env = {e["name"]: e.get("value") for e in brain["env"]}
    assert env["BRAIN_SIDECAR"] == f"unix:{socket_path}"
    # Tool calls take the framed socket; both sockets live in the shared directory.
    assert env["BRAIN_SIDECAR_FRAMES"] == frames_arg.removeprefix("--listen=frames:")
    socket_dir = str(Path(socket_path).parent)
    assert str(Path(env["BRAIN_SIDECAR_FRAMES"]).parent) == socket_dir
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (sidecar, brain)
    }
    assert mounts["sidecar"][socket_dir] == mounts["brain"][socket_dir] == "sockets"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["sockets"]
    # Credentials reach the sidecar only.
    assert "credentials" in mounts["sidecar"].values()
    assert "credentials" not in mounts["brain"].values()
    assert not any("secret" in str(e).lower() for e in brain.get("envFrom", []))
    # The grace period covers the brain's drain and the sidecar's after it.
    brain_drain = float(env["BRAIN_DRAIN_TIMEOUT"])
    sidecar_drain = float(
        next(a for a in sidecar["args"] if a.startswith("--drain-timeout=")).split("=")[1][:-1]
    )
    assert pod["terminationGracePeriodSeconds"] >= brain_drain + sidecar_drain


def test_gpu_only_on_the_brain_in_the_gpu_overlay() -> None:
    cpu = find(render("cpu"), "Deployment", "tandem")
    gpu_objects = render("gpu")
    gpu = find(gpu_objects, "Deployment", "tandem")
    for c in pod_containers(cpu):
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert container(gpu, "brain")["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container(gpu, "sidecar")["resources"]["limits"]
    assert (
        "nvidia.com/gpu"
        not in container(find(gpu_objects, "Deployment", "demo-tools"), "demo-tools")["resources"][
            "limits"
        ]
    )
    pod = gpu["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e.get("value") for e in container(gpu, "brain")["env"]}
    assert env["BRAIN_PLANNER"] == "local"
    assert env["BRAIN_MODEL_DIR"].startswith("/models")
    # The CUDA image is the brain's only: demo-tools runs the same image in both overlays.
    assert container(gpu, "brain")["image"].endswith("-cuda")
    assert container(gpu, "sidecar")["image"] == container(cpu, "sidecar")["image"]
    demo = "demo-tools"
    assert (
        container(find(gpu_objects, "Deployment", demo), demo)["image"]
        == container(find(render("cpu"), "Deployment", demo), demo)["image"]
    )
    # One GPU per replica: a rollout on a full GPU node can only replace pods, not surge.
    rolling = gpu["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0
    assert rolling["maxUnavailable"] >= 1
    pdb = find(gpu_objects, "PodDisruptionBudget", "tandem")
    assert pdb["spec"]["maxUnavailable"] >= rolling["maxUnavailable"]


def test_hpa_scales_the_brain_on_its_cpu_and_runs_in_flight(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    hpa = find(objects, "HorizontalPodAutoscaler", "tandem")
    assert hpa["apiVersion"] == "autoscaling/v2"
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert by_type["ContainerResource"]["containerResource"]["container"] == "brain"
    assert by_type["Pods"]["pods"]["metric"]["name"] == "brain_runs_in_flight"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_components_render_and_their_custom_resources_are_well_formed(tmp_path: Path) -> None:
    objects = render_with_components(tmp_path, "cpu", "monitoring", "keda")
    kinds = {o["kind"] for o in objects}
    assert "HorizontalPodAutoscaler" not in kinds  # KEDA owns scaling then
    monitor = find(objects, "ServiceMonitor", "tandem")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    service = find(objects, "Service", "tandem-metrics")
    assert ports == {p["name"] for p in service["spec"]["ports"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    rule = find(objects, "PrometheusRule", "tandem")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "TandemToolErrorRatioHigh",
        "TandemToolCallLatencyP99High",
        "TandemRunsRefusedAtAdmission",
        "TandemCircuitOpen",
        "TandemConfigReloadRejected",
        "TandemBrainNotReady",
    }
    runbook = (K8S / "README.md").read_text()
    for name, alert in alerts.items():
        assert alert["expr"].strip()
        assert f"### {name}" in runbook, f"no runbook entry for {name}"
        # Alerts only name metrics that the code exports.
        for metric in re.findall(r"\b((?:sidecar|brain)_[a-z_]+)", alert["expr"]):
            base = re.sub(r"_(bucket|total)$", "", metric)
            assert base in exported_metric_names(), metric
    scaled = find(objects, "ScaledObject", "tandem")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "tandem"
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert "brain_runs_in_flight" in triggers["prometheus"]["metadata"]["query"]
    assert triggers["cpu"]["metadata"]["containerName"] == "brain"


def exported_metric_names() -> set[str]:
    """Metric names defined in the sidecar's and the brain's code."""
    sources = [*(REPO / "sidecar-rs/src").glob("*.rs"), *(REPO / "brain-py/src/brain").glob("*.py")]
    names: set[str] = set()
    for path in sources:
        names.update(re.findall(r'"((?:sidecar|brain)_[a-z_]+)"', path.read_text()))
    return {re.sub(r"_(bucket|total)$", "", n) for n in names}


def test_the_configmap_is_what_the_sidecar_accepts(tmp_path: Path) -> None:
    config = find(render("cpu"), "ConfigMap")
    tools = tmp_path / "tools.yaml"
    tools.write_text(config["data"]["tools.yaml"])
    proc = subprocess.run(
        [str(sidecar_binary()), "--config", str(tools), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Same tools as the demo, reached through the cluster Service.
    demo = yaml.safe_load((REPO / "brain-py/src/demo_tools/tools.yaml").read_text())
    cluster = yaml.safe_load(config["data"]["tools.yaml"])
    assert [t["name"] for t in cluster["tools"]] == [t["name"] for t in demo["tools"]]
    for mine, theirs in zip(cluster["tools"], demo["tools"], strict=True):
        assert mine["request"]["url"] == theirs["request"]["url"].replace(
            "http://127.0.0.1:8081", "http://demo-tools:8081"
        )
        assert {k: v for k, v in mine.items() if k not in ("request", "egress")} == {
            k: v for k, v in theirs.items() if k not in ("request", "egress")
        }


# ---------------------------------------------------------------- images


def dockerfile(path: str) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, line continuations joined."""
    text = (REPO / path).read_text().replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", ["sidecar-rs/Dockerfile", "brain-py/Dockerfile"])
def test_dockerfiles_copy_what_exists_and_run_as_a_numeric_user(path: str) -> None:
    instructions = dockerfile(path)
    for instruction, args in instructions:
        if instruction == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{path}: COPY {source} does not exist"
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users, f"{path} has no USER"
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), (
        f"{path}: USER {users[-1]} is not numeric"
    )


def test_the_sidecar_image_runs_the_flags_the_binary_accepts() -> None:
    instructions = dict(dockerfile("sidecar-rs/Dockerfile"))
    entrypoint = yaml.safe_load(instructions["ENTRYPOINT"])
    assert entrypoint == ["/usr/local/bin/sidecar"]
    assert "FROM scratch" in (REPO / "sidecar-rs/Dockerfile").read_text()  # no shell at run time
    cmd = yaml.safe_load(instructions["CMD"])
    help_text = subprocess.run(
        [str(sidecar_binary()), "--help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in help_text, flag
    deployment = find(render("cpu"), "Deployment", "tandem")
    sidecar = container(deployment, "sidecar")
    assert sidecar["command"] == entrypoint
    for arg in sidecar["args"]:
        assert arg.split("=")[0] in help_text, arg


def test_the_brain_image_runs_the_command_the_cli_accepts() -> None:
    instructions = dict(dockerfile("brain-py/Dockerfile"))
    assert yaml.safe_load(instructions["ENTRYPOINT"]) == ["brain"]
    cmd = yaml.safe_load(instructions["CMD"])
    python = str(REPO / ".venv/bin/python")
    help_text = subprocess.run(
        [python, "-m", "brain", cmd[0], "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for flag in (a for a in cmd[1:] if a.startswith("--")):
        assert flag in help_text, flag
    deployment = find(render("cpu"), "Deployment", "tandem")
    brain = container(deployment, "brain")
    assert brain["command"] == ["brain"]
    assert brain["args"] == ["serve"]
    demo = container(find(render("cpu"), "Deployment", "demo-tools"), "demo-tools")
    demo_help = subprocess.run(
        [python, *demo["command"][1:], "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for flag in (a for a in demo["args"] if a.startswith("--")):
        assert flag in demo_help, flag


def test_dockerignore_keeps_build_outputs_and_venvs_out() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    assert "**/target/" in patterns
    assert ".venv/" in patterns
    assert ".git/" in patterns


# ---------------------------------------------------------------- the HPA's arithmetic


def hpa_desired(
    current: int,
    metrics: list[tuple[float, float]],
    *,
    min_replicas: int,
    max_replicas: int,
    tolerance: float = 0.1,
) -> int:
    """What the HPA controller computes: for each (average value, target), ceil(current x
    value / target) unless within the tolerance; the max across metrics; clamped."""
    proposals = []
    for value, target in metrics:
        ratio = value / target
        proposals.append(current if abs(ratio - 1) <= tolerance else math.ceil(current * ratio))
    return max(min_replicas, min(max_replicas, max(proposals)))


def limited_by_behavior(current: int, desired: int, behavior: dict[str, Any]) -> int:
    """One period of the configured scaling policies (selectPolicy Max)."""
    direction = behavior["scaleUp"] if desired > current else behavior["scaleDown"]
    steps = []
    for policy in direction["policies"]:
        if policy["type"] == "Percent":
            delta = math.ceil(current * policy["value"] / 100)
        else:
            delta = policy["value"]
        steps.append(delta)
    step = max(steps)
    return min(desired, current + step) if desired > current else max(desired, current - step)


DECIMAL_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_quantity(text: str) -> int:
    """A whole-number Kubernetes quantity with a decimal suffix ("1k" -> 1000)."""
    match = re.fullmatch(r"(\d+)([kMGT]?)", text)
    assert match, f"{text!r} is not a whole-number quantity"
    return int(match[1]) * DECIMAL_SUFFIXES[match[2]]


def canonical_quantity(value: int) -> str:
    """How the API server writes a whole number back: the largest exact decimal suffix."""
    for suffix in ("T", "G", "M", "k"):
        if value and value % DECIMAL_SUFFIXES[suffix] == 0:
            return f"{value // DECIMAL_SUFFIXES[suffix]}{suffix}"
    return str(value)


def test_hpa_quantities_are_written_as_the_server_stores_them(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Else every `kubectl apply` reports a change and server-side apply conflicts."""
    _, objects = rendered
    hpa = find(objects, "HorizontalPodAutoscaler", "tandem")
    for metric in hpa["spec"]["metrics"]:
        target = next(iter(v for k, v in metric.items() if k != "type"))["target"]
        for key in ("averageValue", "value"):
            if key in target:
                text = str(target[key])
                assert text == canonical_quantity(parse_quantity(text)), (key, text)


def test_hpa_arithmetic_matches_the_sizing_guidance() -> None:
    hpa = find(render("cpu"), "HorizontalPodAutoscaler", "tandem")
    spec = hpa["spec"]
    targets = {m["type"]: m for m in spec["metrics"]}
    cpu_target = targets["ContainerResource"]["containerResource"]["target"]["averageUtilization"]
    runs_target = parse_quantity(targets["Pods"]["pods"]["target"]["averageValue"])
    bounds = {"min_replicas": spec["minReplicas"], "max_replicas": spec["maxReplicas"]}

    # 4 pods at 2,500 runs each (10,000 agents), CPU at 60%: runs drive the scale-up.
    desired = hpa_desired(4, [(60, cpu_target), (2500, runs_target)], **bounds)
    assert desired == math.ceil(4 * 2500 / runs_target) == 10
    # Scale-up is fast: +100% or +4 pods per 15 s, whichever is more.
    assert limited_by_behavior(4, desired, spec["behavior"]) == 8
    # CPU-bound (slow tools, little waiting): CPU drives it.
    assert hpa_desired(4, [(140, cpu_target), (500, runs_target)], **bounds) == 8
    # Within 10% of target: no change.
    assert hpa_desired(6, [(74, cpu_target), (1050, runs_target)], **bounds) == 6
    # Idle: down to the floor, but at most 20% per minute after a 5-minute window.
    desired = hpa_desired(10, [(5, cpu_target), (10, runs_target)], **bounds)
    assert desired == spec["minReplicas"]
    assert limited_by_behavior(10, desired, spec["behavior"]) == 8
    # A surge never exceeds the ceiling.
    assert (
        hpa_desired(15, [(300, cpu_target), (40_000, runs_target)], **bounds) == spec["maxReplicas"]
    )
