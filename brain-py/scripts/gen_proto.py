"""Generate the Python gRPC stubs for ``proto/dispatch/v1/dispatch.proto``.

The stubs are committed (so installing the brain needs no protoc), and
``tests/test_proto_stubs.py`` fails when they are stale. Run ``make proto``
after editing the proto.

The proto is mapped to the virtual path ``brain/_proto/...`` so the generated
imports read ``from brain._proto.dispatch.v1 import ...`` without rewriting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

BRAIN_PY = Path(__file__).resolve().parents[1]
PROTO_ROOT = BRAIN_PY.parent / "proto"
PROTO = "brain/_proto/dispatch/v1/dispatch.proto"


def generate(out: Path) -> None:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out``."""
    pkg = out / "brain" / "_proto" / "dispatch" / "v1"
    pkg.mkdir(parents=True, exist_ok=True)
    for d in (out / "brain" / "_proto", out / "brain" / "_proto" / "dispatch", pkg):
        (d / "__init__.py").touch()
    args = [
        "grpc_tools.protoc",
        f"-Ibrain/_proto={PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=BRAIN_PY / "src")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
