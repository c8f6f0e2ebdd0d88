"""Rendering the kustomize overlays and small helpers over the rendered objects."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"


def kustomize(path: Path, *extra: str) -> str:
    """`kubectl kustomize` (or the standalone `kustomize build`) of `path`."""
    local = REPO / ".tools" / "kustomize"
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(path), *extra]
    elif shutil.which("kustomize") or local.exists():
        binary = shutil.which("kustomize") or str(local)
        command = [binary, "build", str(path), *extra]
    else:
        raise RuntimeError("neither kubectl nor kustomize is installed (make test installs one)")
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout


def render(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kustomize(K8S / "overlays" / overlay)) if doc]


def render_with_components(tmp: Path, overlay: str, *components: str) -> list[dict[str, Any]]:
    """An overlay plus optional components, as a user's own kustomization would add them."""
    tmp.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize wants paths relative to the kustomization.
        "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp)],
        "components": [os.path.relpath(K8S / "components" / c, tmp) for c in components],
    }
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    text = kustomize(tmp, "--load-restrictor", "LoadRestrictionsNone")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_in_overlay(tmp: Path, overlay: str, *components: str) -> list[dict[str, Any]]:
    """The overlay with `components:` added in its own kustomization.yaml, as its comment
    tells users to do (a copy, with its relative paths pointed back at k8s/)."""
    tmp.mkdir(parents=True, exist_ok=True)
    source = K8S / "overlays" / overlay
    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())

    def moved(path: str) -> str:
        return os.path.relpath((source / path).resolve(), tmp)

    kustomization["resources"] = [moved(r) for r in kustomization.get("resources", [])]
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            patch["path"] = moved(patch["path"])
    kustomization["components"] = [
        *(moved(c) for c in kustomization.get("components", [])),
        *(os.path.relpath(K8S / "components" / c, tmp) for c in components),
    ]
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    text = kustomize(tmp, "--load-restrictor", "LoadRestrictionsNone")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name):
            return obj
    raise KeyError(f"no {kind} {name or ''} rendered")


def pod_containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod_containers(deployment):
        if c["name"] == name:
            return c
    raise KeyError(name)
