"""Fixtures for the tests against a real control plane (run by `make test-k8s`, which
builds the binaries first; `make test` does not collect this directory)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster import Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A fresh control plane per test module, with the optional components' CRDs."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started
