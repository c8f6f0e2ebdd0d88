"""The HPA of k8s/base/hpa.yaml, reconciled by the real HPA controller from real metrics
APIs: metrics-server (metrics.k8s.io) scraping kwok's simulated usage for the brain
container's CPU, and a custom-metrics API for `brain_runs_in_flight` (custom_metrics.py
says what is simulated there). Then the switch to KEDA (issue 15).

One change to the manifest, for time only: the scale-down stabilization window (5 min)
and rate (20 %/min) are shortened so that the way back down takes seconds. The
controller applies them as configured; their arithmetic is checked offline in
tests/test_k8s.py::test_hpa_arithmetic_matches_the_sizing_guidance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import HPA_SYNC_PERIOD, K8S, NAMESPACE, Cluster, add_cpu_nodes, kustomization
from custom_metrics import METRIC, CustomMetricsServer

pytestmark = pytest.mark.timeout(420)
HPA_PERIOD_SECONDS = int(HPA_SYNC_PERIOD.removesuffix("s"))

FAST_SCALE_DOWN = {
    "spec": {
        "behavior": {
            "scaleDown": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
            }
        }
    }
}


def brain_cpu(millicores: int) -> list[dict[str, Any]]:
    """kwok's simulated usage. Memory too: metrics-server drops a container (or node)
    that reports none. (kwok reports the pod's `containers` only, so the native sidecar
    has no metrics here; the HPA reads the brain container's alone anyway.)"""
    return [
        {
            "containers": ["brain"],
            "usage": {"cpu": {"value": f"{millicores}m"}, "memory": {"value": "600Mi"}},
        },
        {
            "containers": ["demo-tools"],
            "usage": {"cpu": {"value": "10m"}, "memory": {"value": "60Mi"}},
        },
    ]


def replicas(cluster: Cluster) -> int:
    return int(cluster.get("deployment", "tandem")["spec"]["replicas"])


def rescales(cluster: Cluster) -> list[str]:
    events = cluster.get("events", namespace=NAMESPACE)["items"]
    return [
        e["message"]
        for e in sorted(events, key=lambda e: e.get("lastTimestamp") or e["eventTime"] or "")
        if e["involvedObject"]["kind"] == "HorizontalPodAutoscaler"
        and e["reason"] == "SuccessfulRescale"
    ]


@pytest.fixture(scope="module")
def runs(cluster: Cluster) -> Iterator[CustomMetricsServer]:
    add_cpu_nodes(cluster, 3, cpu="16")
    cluster.set_usage("tandem-load", brain_cpu(100))
    cluster.start_metrics_server()
    server = CustomMetricsServer(cluster).start()
    try:
        cluster.kubectl("apply", "-k", str(K8S / "overlays" / "cpu"))
        cluster.kubectl(
            "-n", NAMESPACE, "patch", "hpa", "tandem", "--type=merge", "-p",
            json.dumps(FAST_SCALE_DOWN),
        )  # fmt: skip
        cluster.wait_for("2 replicas (minReplicas)", lambda: replicas(cluster) == 2, timeout=60)
        yield server
    finally:
        server.stop()


def test_the_hpa_reads_both_metrics(cluster: Cluster, runs: CustomMetricsServer) -> None:
    def active() -> dict[str, Any] | None:
        hpa = cluster.get("hpa", "tandem")
        conditions = {c["type"]: c for c in hpa["status"].get("conditions", [])}
        current = {m["type"]: m for m in hpa["status"].get("currentMetrics") or []}
        scaling = conditions.get("ScalingActive", {})
        if scaling.get("status") == "True" and {"ContainerResource", "Pods"} <= set(current):
            return current
        return None

    current = cluster.wait_for("the HPA computing from both metrics", active, timeout=120)
    assert current["ContainerResource"]["containerResource"]["container"] == "brain"
    # kwok's 100m for the brain against its 1-CPU request: 10 % (a rate over two
    # scrapes, so give or take the scrape timing).
    utilization = current["ContainerResource"]["containerResource"]["current"]["averageUtilization"]
    assert 7 <= utilization <= 13, utilization
    assert current["Pods"]["pods"]["metric"]["name"] == METRIC
    assert any(f"/pods/*/{METRIC}" in r for r in runs.requests)
    top = cluster.kubectl("-n", NAMESPACE, "top", "pod", "--containers").stdout
    assert "brain" in top


def test_brain_cpu_scales_up_and_back_down(cluster: Cluster, runs: CustomMetricsServer) -> None:
    cluster.set_usage("tandem-load", brain_cpu(1400))  # 140 % of the request; target 70 %
    cluster.wait_for("a scale-up on CPU", lambda: replicas(cluster) > 2, timeout=120)
    cluster.set_usage("tandem-load", brain_cpu(100))
    assert any("cpu" in m and "above target" in m for m in rescales(cluster)), rescales(cluster)
    cluster.wait_for("back to 2 replicas", lambda: replicas(cluster) == 2, timeout=150)
    assert "All metrics below target" in rescales(cluster)[-1]


def test_runs_in_flight_scale_to_the_target_per_pod(
    cluster: Cluster, runs: CustomMetricsServer
) -> None:
    # 5,000 runs and a target of 1,000 per pod: 5 pods, and there it settles.
    runs.set_total_runs(5000)
    cluster.wait_for("5 replicas", lambda: replicas(cluster) == 5, timeout=120)
    assert any(f"pods metric {METRIC} above target" in m for m in rescales(cluster))
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deploy/tandem", "--timeout=90s")
    settled = len(rescales(cluster))
    # Nothing more happens: that can only be watched for a while. Three HPA periods,
    # each computing 1,000 per pod (within tolerance of the target).
    time.sleep(3 * HPA_PERIOD_SECONDS)
    hpa = cluster.get("hpa", "tandem")
    pods_metric = next(m for m in hpa["status"]["currentMetrics"] if m["type"] == "Pods")
    assert pods_metric["pods"]["current"]["averageValue"] == "1k"
    assert replicas(cluster) == 5
    assert len(rescales(cluster)) == settled
    runs.set_total_runs(0)
    cluster.wait_for("back to 2 replicas", lambda: replicas(cluster) == 2, timeout=150)


def test_switching_to_keda_needs_the_hpa_deleted(
    cluster: Cluster, runs: CustomMetricsServer, tmp_path: Path
) -> None:
    """`kubectl apply` does not prune: the HPA stays, and KEDA refuses a workload an
    HPA already scales. k8s/README.md gives the step; here it is, as documented."""
    before = replicas(cluster)
    keda = kustomization(tmp_path / "keda", "cpu", "keda")
    cluster.kubectl("apply", "-k", str(keda))
    assert cluster.kubectl("-n", NAMESPACE, "get", "hpa", "tandem", check=False).returncode == 0
    cluster.kubectl("-n", NAMESPACE, "delete", "hpa", "tandem")  # the documented step
    assert cluster.kubectl("-n", NAMESPACE, "get", "hpa", "-o", "name").stdout.strip() == ""
    scaled = cluster.get("scaledobject", "tandem")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "tandem"
    # Accepted by the published CRD's schema, and a re-apply is a no-op.
    diff = cluster.kubectl("diff", "-k", str(keda), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert replicas(cluster) == before  # nothing reset the count on the way
