"""The committed gRPC stubs match proto/ (regenerate with `make proto`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BRAIN_PY = Path(__file__).resolve().parents[1]


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_proto", BRAIN_PY / "scripts/gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_stubs_are_fresh(tmp_path: Path) -> None:
    gen = _load_generator()
    gen.generate(tmp_path)  # type: ignore[attr-defined]
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "generator produced nothing"
    committed = BRAIN_PY / "src"
    stale = [
        str(rel)
        for rel in fresh
        if not (committed / rel).exists()
        or (committed / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"stale generated files (run `make proto`): {stale}"
