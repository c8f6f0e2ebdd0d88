"""A real Kubernetes control plane on loopback, for the tests in this directory.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which simulates
nodes and the pods on them: no container runtime), built by build-tools.sh under
.tools/k8s/. Every process listens on 127.0.0.1 only, on free ports, with its state in a
temporary directory, and runs in its own process group: `stop()` ends exactly the
processes `start()` started. Every wait has a deadline, and a failure says which
process, with the end of its log.

Why no library: the usual harnesses (kind, kwokctl, envtest) either need a container
engine, download release binaries at run time, or run only etcd and the apiserver. The
controller-manager (HPA, Deployment, PV binder, eviction) and the scheduler are the point
here, so the few processes are started directly.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("K8S_TOOLS_DIR", REPO / ".tools" / "k8s"))
BIN = TOOLS / "bin"
CRDS = TOOLS / "crds"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "metrics-server",
)
NAMESPACE = "tandem"
METRICS_SERVICE = "metrics-server"
CUSTOM_METRICS_SERVICE = "custom-metrics"
# How often the HPA controller re-evaluates (default 15 s): shorter, so that the tests
# that watch it act do not wait needlessly. Everything else runs with its defaults.
HPA_SYNC_PERIOD = "5s"
# kwok renews each node's Lease; with its default lease the node controller marks the
# simulated pods NotReady after ~50 s (issue 15). 40 s leases are renewed in time.
KWOK_NODE_LEASE_SECONDS = 40

T = TypeVar("T")

# Every control-plane process is started through this: the kernel SIGKILLs it when pytest
# (the thread that started it: the main one) dies, however it dies (a failed CI step,
# SIGTERM, SIGKILL, a crash), so a cluster cannot outlive its test run even when `stop()`
# is never reached. setpriv (util-linux, on every Debian) sets that parent-death signal
# and execs the binary, so no Python runs between fork and exec (`preexec_fn` is unsafe
# with the threads these tests run).
DIE_WITH_PYTEST = ("setpriv", "--pdeathsig", "KILL", "--")


def missing_tools() -> list[str]:
    return [name for name in BINARIES if not (BIN / name).exists()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25
) -> T:
    """Poll `probe` until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except Exception as error:  # a probe may fail until the thing is up
            last_error = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s (last error: {last_error})")
        time.sleep(interval)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """GET `url`: True on 200. An error response is closed here (urllib leaves it open)."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            response.read()
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        error.close()
        return False


class Process:
    """One control-plane process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*DIE_WITH_PYTEST, *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches its children
            )
        return self

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
        except ProcessLookupError:
            pass


class KubectlError(RuntimeError):
    pass


class Cluster:
    """The control plane; `kubectl()` talks to it as cluster-admin."""

    def __init__(self, workdir: Path) -> None:
        if missing := missing_tools():
            raise RuntimeError(
                f"missing {', '.join(missing)} in {BIN}: run tests/k8s_cluster/build-tools.sh "
                "(or `make test-k8s`, which runs it)"
            )
        self.dir = workdir
        self.processes: list[Process] = []
        self.ports = {
            name: free_port()
            for name in (
                "etcd",
                "etcd-peer",
                "apiserver",
                "controller-manager",
                "scheduler",
                "kwok",
            )
        }
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.kubeconfig = self.dir / "kubeconfig"
        self.pki = self.dir / "pki"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        try:
            self._make_pki()
            self._write_kubeconfig()
            self._start_etcd()
            self._start_apiserver()
            self.install_crds()
            self._start_controllers()
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def _run(self, name: str, *args: str) -> Process:
        process = Process(name, [str(BIN / name), *args], self.dir / f"{name}.log").start()
        self.processes.append(process)
        return process

    def _check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def _make_pki(self) -> None:
        """A CA and one certificate (127.0.0.1, serving and client, group system:masters)
        that every component uses; a key pair for service-account tokens."""
        self.pki.mkdir(parents=True)
        p = self.pki

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(p / "ca.key"), "-out", str(p / "ca.crt"), "-subj", "/CN=tandem-test-ca",
        )  # fmt: skip
        (p / "admin.ext").write_text(
            # The aggregator checks an APIService's certificate for <service>.<ns>.svc.
            "subjectAltName=IP:127.0.0.1,DNS:localhost,"
            f"DNS:{METRICS_SERVICE}.kube-system.svc,DNS:{CUSTOM_METRICS_SERVICE}.kube-system.svc\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
        )
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p / "admin.key"),
            "-out", str(p / "admin.csr"), "-subj", "/O=system:masters/CN=tandem-test-admin",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(p / "admin.csr"), "-CA", str(p / "ca.crt"),
            "-CAkey", str(p / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(p / "admin.ext"), "-out", str(p / "admin.crt"),
        )  # fmt: skip
        openssl("genrsa", "-out", str(p / "sa.key"), "2048")
        openssl("rsa", "-in", str(p / "sa.key"), "-pubout", "-out", str(p / "sa.pub"))

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(self.pki / "admin.crt"),
                        "client-key": str(self.pki / "admin.key"),
                    },
                }
            ],
            # A user's context: namespace "default", so an object without a namespace of
            # its own lands there (issue 15), as it would for them.
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "admin", "namespace": "default"},
                }
            ],
            "current-context": "test",
        }
        self.kubeconfig.write_text(json.dumps(config))

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        process = self._run(
            "etcd",
            "--name=test",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--unsafe-no-fsync=true",  # a throwaway store: no fsync on a shared disk
            "--log-level=warn",
        )

        def healthy() -> bool:
            process.check_alive()
            return http_ok(f"{client}/health")

        wait_until("etcd healthy", healthy, timeout=60)

    def _start_apiserver(self) -> None:
        p = self.pki
        process = self._run(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={p / 'admin.crt'}",
            f"--tls-private-key-file={p / 'admin.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            # As on a real cluster: privileged pods are allowed by the apiserver, so a
            # refusal in the tests comes from Pod Security admission and nothing else.
            "--allow-privileged=true",
            # The default reconciler writes the advertise address into the `kubernetes`
            # Endpoints, and a loopback address is not a valid endpoint.
            "--endpoint-reconciler-type=none",
            # Aggregated APIs (metrics.k8s.io): the apiserver proxies to them with this
            # client certificate, and they trust the user it forwards in headers.
            f"--requestheader-client-ca-file={p / 'ca.crt'}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p / 'admin.crt'}",
            f"--proxy-client-key-file={p / 'admin.key'}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
        )
        context = ssl.create_default_context(cafile=str(p / "ca.crt"))
        context.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))

        def ready() -> bool:
            process.check_alive()
            return http_ok(f"{self.server}/readyz", context)

        wait_until("kube-apiserver ready", ready, timeout=120, interval=0.5)

    def _start_controllers(self) -> None:
        p = self.pki
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._run(
            "kube-controller-manager",
            kubeconfig,
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['controller-manager']}",
            "--leader-elect=false",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD}",
            f"--cert-dir={self.dir / 'controller-manager-certs'}",
        )
        self._run(
            "kube-scheduler",
            kubeconfig,
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['scheduler']}",
            "--leader-elect=false",
            f"--cert-dir={self.dir / 'scheduler-certs'}",
        )
        self._run(
            "kwok",
            kubeconfig,
            # Only the nodes the tests create (annotated), never anything else.
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1",
            f"--node-port={self.ports['kwok']}",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
            f"--tls-cert-file={p / 'admin.crt'}",
            f"--tls-private-key-file={p / 'admin.key'}",
            f"--node-lease-duration-seconds={KWOK_NODE_LEASE_SECONDS}",
            "--cidr=10.244.0.1/16",
            # Kubelet-like /metrics/resource per node (for metrics-server), with the
            # usage the tests set in ClusterResourceUsage objects.
            f"--config={TOOLS / 'kwok' / 'metrics-resource.yaml'}",
            "--enable-crds=ClusterResourceUsage,ResourceUsage",
        )

        # The controller-manager works once the service-account controller has made the
        # `default` ServiceAccount: pods are refused by ServiceAccount admission before.
        def controllers_up() -> bool:
            self._check_alive()
            return self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0

        wait_until("kube-controller-manager creating ServiceAccounts", controllers_up, timeout=120)

    # ------------------------------------------------------------ kubectl

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = [
            str(BIN / "kubectl"),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.dir / 'kubectl-cache'}",
            *args,
        ]
        proc = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            self._check_alive()
            raise KubectlError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def get(self, kind: str, name: str = "", namespace: str | None = NAMESPACE) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)

    def apply_objects(self, objects: Iterable[dict[str, Any]], *extra: str) -> str:
        items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        return self.kubectl("apply", "-f", "-", *extra, input=json.dumps(items)).stdout

    def wait_for(
        self, what: str, probe: Callable[[], T | None], timeout: float = 90, interval: float = 0.5
    ) -> T:
        def checked() -> T | None:
            self._check_alive()
            return probe()

        return wait_until(what, checked, timeout, interval)

    def install_crds(self) -> list[str]:
        """The prometheus-operator and KEDA CRDs, as their projects publish them, and
        kwok's resource-usage CRDs."""
        files = sorted(CRDS.glob("*.yaml"))
        if not files:
            raise RuntimeError(f"no CRDs in {CRDS}: run tests/k8s_cluster/build-tools.sh")
        # Server-side: the published CRDs are too large for the last-applied annotation.
        args = ["apply", "--server-side"]
        for path in files:
            args += ["-f", str(path)]
        self.kubectl(*args)
        names = [
            line.split()[0] for line in self.kubectl("get", "crd", "-o", "name").stdout.split()
        ]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        return names

    # ------------------------------------------------------------ metrics APIs

    def api_get(self, path: str) -> Any:
        """GET on the API server as cluster-admin (for in-process helpers)."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(f"{self.server}{path}", timeout=10, context=context) as r:
            return json.load(r)

    def register_api_service(self, group: str, version: str, service: str, port: int) -> None:
        """Route an aggregated API to a server on 127.0.0.1:port: an ExternalName Service
        (the aggregator resolves it to that host) and an APIService trusting our CA."""
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        self.apply_objects(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": service, "namespace": "kube-system"},
                    "spec": {
                        "type": "ExternalName",
                        "externalName": "127.0.0.1",
                        "ports": [{"name": "https", "port": port}],
                    },
                },
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": f"{version}.{group}"},
                    "spec": {
                        "group": group,
                        "version": version,
                        "groupPriorityMinimum": 100,
                        "versionPriority": 100,
                        "caBundle": ca,
                        "service": {"name": service, "namespace": "kube-system", "port": port},
                    },
                },
            ]
        )

        def available() -> bool:
            status = self.get("apiservice", f"{version}.{group}", namespace=None)["status"]
            conditions = status.get("conditions", [])
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        self.wait_for(f"APIService {version}.{group} Available", available, timeout=90)

    def start_metrics_server(self) -> None:
        """metrics-server, scraping kwok's simulated kubelet metrics, as metrics.k8s.io."""
        port = free_port()
        p = self.pki
        self._run(
            "metrics-server",
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={p / 'admin.crt'}",
            f"--tls-private-key-file={p / 'admin.key'}",
            # kwok serves each node's /metrics/resource at the node's address and port.
            "--kubelet-use-node-status-port",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--metric-resolution=10s",
            "--kubelet-request-timeout=5s",  # must be below the resolution
        )
        self.register_api_service("metrics.k8s.io", "v1beta1", METRICS_SERVICE, port)

    def set_usage(self, name: str, usages: list[dict[str, Any]]) -> None:
        """kwok's simulated resource usage for the pods in our namespace."""
        self.apply_objects(
            [
                {
                    "apiVersion": "kwok.x-k8s.io/v1alpha1",
                    "kind": "ClusterResourceUsage",
                    "metadata": {"name": name},
                    "spec": {"selector": {"matchNamespaces": [NAMESPACE]}, "usages": usages},
                }
            ]
        )

    # ------------------------------------------------------------ nodes

    def add_node(
        self,
        name: str,
        *,
        zone: str,
        cpu: str = "8",
        memory: str = "32Gi",
        gpus: int = 0,
    ) -> None:
        """A kwok node: it reports Ready and runs the pods bound to it (simulated)."""
        allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": zone,
            "type": "kwok",
        }
        taints = []
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
            labels["nvidia.com/gpu.present"] = "true"
            # As the NVIDIA GPU operator taints GPU nodes.
            taints.append({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {
                    "kwok.x-k8s.io/node": "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                    # Where kwok serves this node's kubelet-like resource metrics.
                    "metrics.k8s.io/resource-metrics-path": (
                        f"/metrics/nodes/{name}/metrics/resource"
                    ),
                },
            },
            "spec": {"taints": taints},
            "status": {
                "allocatable": allocatable,
                "capacity": allocatable,
            },
        }
        self.apply_objects([node])

        def ready() -> bool:
            conditions = self.get("node", name, namespace=None)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        self.wait_for(f"kwok node {name} Ready", ready, timeout=60)

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self.processes)


# ---------------------------------------------------------------- what the tests deploy

K8S = REPO / "k8s"


def kustomization(
    where: Path,
    overlay: str,
    *components: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A user's own kustomization over one of our overlays, adding components (and
    anything in `extra`), as k8s/README.md describes."""
    where.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, where)],
        "components": [os.path.relpath(K8S / "components" / c, where) for c in components],
        **(extra or {}),
    }
    (where / "kustomization.yaml").write_text(yaml.safe_dump(body))
    return where


def add_cpu_nodes(cluster: Cluster, count: int, cpu: str = "8") -> list[str]:
    names = [f"cpu-{i}" for i in range(count)]
    for i, name in enumerate(names):
        cluster.add_node(name, zone=f"zone-{'ab'[i % 2]}", cpu=cpu)
    return names


def add_models_volume(cluster: Cluster) -> None:
    """What an operator provides before applying the gpu overlay (k8s/README.md): a
    volume for the `tandem-models` claim. Never mounted (kwok runs no containers)."""
    cluster.apply_objects(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "tandem-models"},
                "spec": {
                    "capacity": {"storage": "20Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "nfs": {"server": "models.invalid", "path": "/models"},
                    "claimRef": {"namespace": NAMESPACE, "name": "tandem-models"},
                },
            }
        ]
    )


@contextmanager
def running_cluster(workdir: Path) -> Iterator[Cluster]:
    """A fresh control plane, with the optional components' CRDs; stopped on exit."""
    started = Cluster(workdir).start()
    try:
        yield started
    finally:
        started.stop()
