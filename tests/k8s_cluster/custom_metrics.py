"""A small custom-metrics API (custom.metrics.k8s.io/v1beta2) serving
`brain_runs_in_flight` per pod, registered with the real API server's aggregator.

In production prometheus-adapter or KEDA serve this metric from Prometheus, which
scrapes the brains. kwok runs no containers, so there is no brain to scrape: the test
sets the fleet's total runs in flight, and this server reports it spread evenly over the
running tandem pods, as a balanced Service would. Everything between it and the
Deployment is real: the aggregator, the HPA controller's custom-metrics client, its
arithmetic and behavior policies, the Deployment controller.

Why not prometheus-adapter: it needs a Prometheus to query and more moving parts than
the one metric this test needs; the API it implements is small and stable.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cluster import CUSTOM_METRICS_SERVICE, NAMESPACE, Cluster, free_port

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
METRIC = "brain_runs_in_flight"


class CustomMetricsServer:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.port = free_port()
        self._lock = threading.Lock()
        self._total_runs = 0
        self.requests: list[str] = []  # metric queries received (the HPA's)
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a thread forever

            def do_GET(self) -> None:
                try:
                    status, body = server.answer(self.path)
                except Exception as error:  # report, do not kill the server thread
                    status, body = 500, {"kind": "Status", "message": str(error)}
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> CustomMetricsServer:
        self.thread.start()
        self.cluster.register_api_service(GROUP, VERSION, CUSTOM_METRICS_SERVICE, self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def set_total_runs(self, runs: int) -> None:
        with self._lock:
            self._total_runs = runs

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(path)
        # The aggregator forwards `pods/*` escaped (`pods/%2A`).
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["apis", GROUP, VERSION]:
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{GROUP}/{VERSION}",
                "resources": [
                    {
                        "name": f"pods/{METRIC}",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "MetricValueList",
                        "verbs": ["get"],
                    }
                ],
            }
        # /apis/custom.metrics.k8s.io/v1beta2/namespaces/<ns>/pods/<name or *>/<metric>
        if (
            len(parts) == 8
            and parts[:3] == ["apis", GROUP, VERSION]
            and parts[3] == "namespaces"
            and parts[5] == "pods"
            and parts[7] == METRIC
        ):
            namespace, name = parts[4], parts[6]
            selector = urllib.parse.parse_qs(url.query).get("labelSelector", [""])[0]
            with self._lock:
                self.requests.append(urllib.parse.unquote(path))
                total = self._total_runs
            return 200, self._values(namespace, name, selector, total)
        return 404, {"kind": "Status", "status": "Failure", "code": 404, "message": path}

    def _values(self, namespace: str, name: str, selector: str, total: int) -> dict[str, Any]:
        query = urllib.parse.urlencode({"labelSelector": selector})
        pods = self.cluster.api_get(f"/api/v1/namespaces/{namespace}/pods?{query}")["items"]
        running = [
            p
            for p in pods
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        share = f"{total * 1000 // max(len(running), 1)}m" if namespace == NAMESPACE else "0"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "MetricValueList",
            "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {},
            "items": [
                {
                    "describedObject": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": p["metadata"]["name"],
                        "apiVersion": "/v1",
                    },
                    "metric": {"name": METRIC},
                    "timestamp": now,
                    "value": share,
                }
                for p in running
                if name in ("*", p["metadata"]["name"])
            ],
        }
