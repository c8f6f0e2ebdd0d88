"""The manifest runs as written: the rendered pod's own commands, args and env, locally.

The test reads the Deployment that `kubectl apply -k k8s/overlays/cpu` would create and
starts its sidecar and brain with exactly the command, args and env it gives. Only what
a cluster provides is substituted, and each substitution is listed here:
- **Volumes.** Each volume becomes a temporary directory: the ConfigMap's files are
  written into it, and emptyDirs and the optional Secret start empty. Every mount path in
  args and env is mapped to its directory.
- **Ports.** Container ports are remapped to free local ports, consistently in args, env
  and probes, so the test cannot collide with anything on the machine.
- **The `demo-tools` Service.** Its name is mapped to a local demo tool service, and
  loopback is added to each tool's egress allowlist, since the cluster ranges do not
  cover it.
- **Binaries.** `/usr/local/bin/sidecar` is the locally built binary; `brain` is the
  venv's console script.

Then the test:
1. waits for the probes the manifest declares (the sidecar's gRPC health, then the
   brain's HTTP checks);
2. runs a task end to end;
3. stops the pod the way Kubernetes does: SIGTERM to the brain, and to the sidecar only
   after the brain has exited, all within `terminationGracePeriodSeconds`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k8s_render import container, find, render

from harness import free_port, sidecar_binary


class Pod:
    """Local stand-ins for a pod's volumes, ports and containers."""

    def __init__(self, tmp: Path, objects: list[dict[str, Any]], demo_tools_url: str) -> None:
        self.deployment = find(objects, "Deployment", "tandem")
        self.spec = self.deployment["spec"]["template"]["spec"]
        self.volumes: dict[str, Path] = {}
        for volume in self.spec["volumes"]:
            path = tmp / "volumes" / volume["name"]
            path.mkdir(parents=True)
            if "configMap" in volume:
                config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
                for name, text in config_map["data"].items():
                    (path / name).write_text(self._local_tools(text, demo_tools_url))
            self.volumes[volume["name"]] = path
        self.ports: dict[int, int] = {}
        for c in (container(self.deployment, "sidecar"), container(self.deployment, "brain")):
            for port in c.get("ports", []):
                self.ports[port["containerPort"]] = free_port()

    @staticmethod
    def _local_tools(text: str, demo_tools_url: str) -> str:
        config = yaml.safe_load(text)
        for tool in config["tools"]:
            tool["request"]["url"] = tool["request"]["url"].replace(
                "http://demo-tools:8081", demo_tools_url
            )
            tool.setdefault("egress", {}).setdefault("allow", []).append("127.0.0.0/8")
        return yaml.safe_dump(config)

    def local(self, c: dict[str, Any], value: str) -> str:
        """`value` with the container's mount paths and ports made local."""
        mounts = {m["mountPath"]: str(self.volumes[m["name"]]) for m in c.get("volumeMounts", [])}
        if mounts:
            # One pass, longest first, whole path components only: a substituted path is
            # never substituted again.
            alternatives = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
            value = re.sub(rf"({alternatives})(?=/|$|[^\w./-])", lambda m: mounts[m[1]], value)
        for port, local in self.ports.items():
            value = re.sub(rf"(?<![\d.]){port}(?!\d)", str(local), value)
        return value

    def command(self, name: str) -> list[str]:
        c = container(self.deployment, name)
        executable = {
            "/usr/local/bin/sidecar": str(sidecar_binary()),
            "brain": str(Path(sys.executable).parent / "brain"),
        }[c["command"][0]]
        return [executable, *c["command"][1:], *(self.local(c, a) for a in c.get("args", []))]

    def env(self, name: str) -> dict[str, str]:
        c = container(self.deployment, name)
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
        for item in c.get("env", []):
            env[item["name"]] = self.local(c, item["value"])
        return env

    def probe_port(self, name: str, probe: str) -> int:
        spec = container(self.deployment, name)[probe]
        return self.ports[(spec.get("grpc") or spec["httpGet"])["port"]]


@pytest.fixture
def demo_tools() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo_tools", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening" in line, line
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    proc.stdout.close()


def wait_grpc_serving(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"gRPC health on :{port} never turned SERVING")


def wait_http_ok(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200")


def test_the_manifest_runs_as_written(tmp_path: Path, demo_tools: str) -> None:
    pod = Pod(tmp_path, render("cpu"), demo_tools)
    grace = pod.spec["terminationGracePeriodSeconds"]
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("sidecar", "brain")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # The native sidecar starts first; the brain only once its startup probe passes.
        procs["sidecar"] = subprocess.Popen(
            pod.command("sidecar"), env=pod.env("sidecar"), stderr=logs["sidecar"]
        )
        wait_grpc_serving(pod.probe_port("sidecar", "startupProbe"), timeout=30)
        procs["brain"] = subprocess.Popen(
            pod.command("brain"),
            env=pod.env("brain"),
            stdout=logs["brain"],
            stderr=logs["brain"],
        )
        brain_port = pod.probe_port("brain", "readinessProbe")
        brain_probe = container(pod.deployment, "brain")
        wait_http_ok(
            f"http://127.0.0.1:{brain_port}{brain_probe['startupProbe']['httpGet']['path']}", 120
        )
        wait_http_ok(
            f"http://127.0.0.1:{brain_port}{brain_probe['readinessProbe']['httpGet']['path']}", 120
        )
        wait_grpc_serving(pod.probe_port("sidecar", "readinessProbe"), timeout=5)

        request = urllib.request.Request(
            f"http://127.0.0.1:{brain_port}/v1/runs?wait=true",
            data=json.dumps({"task": "What is the weather in Tokyo?"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            run = json.load(response)
        assert run["state"] == "succeeded", run
        assert "Tokyo" in run["answer"]
        assert run["tool_calls"] >= 1

        # Termination as Kubernetes orders it: the brain, then the native sidecar.
        started = time.monotonic()
        procs["brain"].send_signal(signal.SIGTERM)
        assert procs["brain"].wait(grace) == 0
        procs["sidecar"].send_signal(signal.SIGTERM)
        assert procs["sidecar"].wait(grace) == 0
        assert time.monotonic() - started < grace
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for log in logs.values():
            log.close()
    assert not any(Path(pod.volumes["sockets"]).iterdir()), "the socket was not removed"
