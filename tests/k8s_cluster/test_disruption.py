"""Node drains against the real eviction API and the PodDisruptionBudget (issue 15).

`kubectl drain` refuses the pods without `--delete-emptydir-data` (they have emptyDirs:
the socket, /tmp, the cache), which k8s/README.md tells operators; with it, evictions go
through the PDB: with every node cordoned, the first brain pod may go, the second may
not until the first one's replacement is ready somewhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from cluster import K8S, NAMESPACE, Cluster, add_cpu_nodes

# Generous: the first test of a module also waits for its cluster to start.
pytestmark = pytest.mark.timeout(300)

DRAIN = ["--ignore-daemonsets", "--delete-emptydir-data", "--grace-period=5"]


def tandem_pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods = cluster.get("pods", namespace=NAMESPACE)["items"]
    return [
        p
        for p in pods
        if p["metadata"]["labels"].get("app.kubernetes.io/name") == "tandem"
        and not p["metadata"].get("deletionTimestamp")
    ]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> list[str]:
    names = add_cpu_nodes(cluster, 3)
    cluster.kubectl("apply", "-k", str(K8S / "overlays" / "cpu"))
    cluster.wait_for(
        "the HPA raising the Deployment to 2", lambda: len(tandem_pods(cluster)) == 2, timeout=60
    )
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deploy/tandem", "--timeout=120s")
    cluster.wait_for(
        "the PDB allowing one disruption",
        lambda: cluster.get("pdb", "tandem")["status"].get("disruptionsAllowed") == 1,
        timeout=60,
    )
    return names


def test_drain_needs_delete_emptydir_data(cluster: Cluster, nodes: list[str]) -> None:
    node = tandem_pods(cluster)[0]["spec"]["nodeName"]
    refused = cluster.kubectl(
        "drain", node, "--ignore-daemonsets", "--timeout=20s", check=False, timeout=60
    )
    assert refused.returncode != 0
    assert "cannot delete Pods with local storage" in refused.stderr, refused.stderr
    assert "--delete-emptydir-data" in refused.stderr
    # Nothing was evicted, but the node stays cordoned: undo it.
    assert len(tandem_pods(cluster)) == 2
    cluster.kubectl("uncordon", node)


def test_drain_respects_the_pod_disruption_budget(cluster: Cluster, nodes: list[str]) -> None:
    # Drain every node at once: nowhere left for a replacement to go.
    blocked = cluster.kubectl(
        "drain", "-l", "type=kwok", *DRAIN, "--timeout=25s", check=False, timeout=90
    )
    assert blocked.returncode != 0, blocked.stdout
    assert "would violate the pod's disruption budget" in blocked.stderr, blocked.stderr
    # One brain pod was evicted, the other one kept serving; the evicted one's
    # replacement has nowhere to run.
    placed = [p for p in tandem_pods(cluster) if p["spec"].get("nodeName")]
    pending = [p for p in tandem_pods(cluster) if not p["spec"].get("nodeName")]
    assert len(placed) == 1, placed
    assert len(pending) == 1, pending
    [survivor] = placed
    assert ready(survivor)
    assert cluster.get("pdb", "tandem")["status"]["disruptionsAllowed"] == 0

    # A node comes back: the replacement runs there, and the drain can finish.
    spare = next(n for n in nodes if n != survivor["spec"]["nodeName"])
    cluster.kubectl("uncordon", spare)
    cluster.wait_for(
        "the replacement pod Ready",
        lambda: sum(ready(p) for p in tandem_pods(cluster)) == 2,
        timeout=90,
    )
    drained = cluster.kubectl(
        "drain", survivor["spec"]["nodeName"], *DRAIN, "--timeout=90s", timeout=120
    )
    assert "evicted" in drained.stdout, drained.stdout
    cluster.wait_for(
        "both brain pods Ready on the spare node",
        lambda: (
            [p["spec"].get("nodeName") for p in tandem_pods(cluster) if ready(p)] == [spare, spare]
        ),
        timeout=90,
    )
