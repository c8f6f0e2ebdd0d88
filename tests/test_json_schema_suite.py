"""The official JSON Schema Test Suite (tests/json_schema_suite/, see its ORIGIN) through
the sidecar's real path: one sidecar per draft, one tool per test group with the group's
schema as its ``output_schema``, every test's data served by a loopback upstream, and each
call's status compared with the test's verdict (valid: OK, invalid: INVALID_RESPONSE).

* The draft comes from each schema's ``$schema`` or, without one, ``defaults.schema_draft``.
* The suite's ``remotes/`` are registered under ``schemas:`` at
  ``http://localhost:1234/...``: nothing is fetched.
* Required tests run with ``formats: annotate`` (the specification's default), the
  optional ``format/`` tests with ``formats: assert``, the other optional tests with
  ``formats: annotate``.
* Every required test must pass. Optional tests that do not are listed in
  :data:`OPTIONAL_FAILURES` with why; a listed test that starts passing fails the run, so
  the list stays true.

``python tests/test_json_schema_suite.py`` prints the per-draft table (README, schemas).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from brain import ClientOptions, SidecarClient, Status

from harness import SidecarProcess, Upstream

SUITE = Path(__file__).resolve().parent / "json_schema_suite"
#: Suite folder -> ``schema_draft`` value.
DRAFTS = {
    "draft4": "4",
    "draft6": "6",
    "draft7": "7",
    "draft2019-09": "2019-09",
    "draft2020-12": "2020-12",
}
REMOTES = "http://localhost:1234/"
#: Calls in flight at once per draft.
CONCURRENCY = 64

#: (draft, file under tests/<draft>/, group description, test description) -> why it
#: fails. Only optional tests may be listed here.
OPTIONAL_FAILURES: dict[tuple[str, str, str, str], str] = {}


class Raw(str):
    """A JSON number kept as its text: the suite's big numbers must reach the sidecar
    exactly as written, which Python floats would not."""


def load(path: Path) -> Any:
    return json.loads(path.read_text(), parse_int=Raw, parse_float=Raw, parse_constant=Raw)


def dump(value: Any, *, ascii_only: bool = True) -> str:
    """JSON text with :class:`Raw` numbers as written. ``ascii_only=False`` for the
    tools file: YAML cannot read a character outside the BMP as a JSON surrogate pair."""
    if isinstance(value, Raw):
        return str.__str__(value)
    if value is None or isinstance(value, bool | int):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, list):
        return "[" + ", ".join(dump(v, ascii_only=ascii_only) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            json.dumps(k, ensure_ascii=ascii_only) + ": " + dump(v, ascii_only=ascii_only)
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"not JSON: {value!r}")


@dataclass
class Case:
    """One test of the suite, and the call that runs it."""

    kind: str  # "required", "format" (optional/format/) or "optional" (the rest)
    file: str
    group: str
    description: str
    valid: bool
    tool: str
    path: str
    data: bytes
    got: Status | None = None


@dataclass
class Draft:
    name: str
    cases: list[Case] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)

    def config(self, base: str) -> str:
        schemas = {}
        for path in sorted((SUITE / "remotes").rglob("*.json")):
            rel = path.relative_to(SUITE / "remotes").as_posix()
            document = load(path)
            # A draft's own remotes, the shared ones, and other drafts' that say which
            # draft they are (some of those are written for their draft only).
            top = rel.split("/", 1)[0]
            if top == self.name or top not in DRAFTS or "$schema" in document:
                schemas[REMOTES + rel] = document
        for tool in self.tools:
            tool["request"] = {"url": base + "/c/{case}"}
        top = {
            "defaults": {"schema_draft": DRAFTS[self.name], "formats": "annotate"},
            "schemas": schemas,
            "tools": self.tools,
        }
        return dump(top, ascii_only=False)


def collect(draft: str) -> Draft:
    """Every test group of ``draft`` as a tool, every test as a case."""
    out = Draft(draft)
    root = SUITE / "tests" / draft
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).as_posix()
        kind = (
            "format"
            if rel.startswith("optional/format/")
            else "optional"
            if rel.startswith("optional/")
            else "required"
        )
        for group in load(path):
            tool = f"g{len(out.tools)}"
            out.tools.append(
                {
                    "name": tool,
                    "description": f"{rel}: {group['description']}",
                    "input_schema": {
                        "type": "object",
                        "properties": {"case": {"type": "string"}},
                        "required": ["case"],
                    },
                    "output_schema": group["schema"],
                    "formats": "assert" if kind == "format" else "annotate",
                    "retry": {"max_attempts": 1},
                    "egress": {"allow": ["127.0.0.0/8"]},
                }
            )
            for test in group["tests"]:
                n = len(out.cases)
                out.cases.append(
                    Case(
                        kind=kind,
                        file=rel,
                        group=group["description"],
                        description=test["description"],
                        valid=bool(test["valid"]),
                        tool=tool,
                        path=str(n),
                        data=dump(test["data"]).encode(),
                    )
                )
    return out


def serve(upstream: Upstream, cases: list[Case]) -> None:
    for case in cases:

        async def handler(_: web.Request, body: bytes = case.data) -> web.StreamResponse:
            return web.Response(body=body, content_type="application/json")

        upstream.route("GET", f"/c/{case.path}", handler)


async def run_cases(target: str, cases: list[Case]) -> None:
    client = SidecarClient(target, options=ClientOptions())
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> None:
        async with gate:
            result = await client.call(case.tool, {"case": case.path}, agent_id="suite")
            case.got = result.status

    try:
        await asyncio.gather(*(one(c) for c in cases))
    finally:
        await client.aclose()


def verdicts(draft: Draft) -> tuple[list[Case], list[Case]]:
    """(required tests that failed, optional tests whose outcome is not the listed one)."""
    required: list[Case] = []
    optional: list[Case] = []
    for case in draft.cases:
        passed = case.got is (Status.OK if case.valid else Status.INVALID_RESPONSE)
        key = (draft.name, case.file, case.group, case.description)
        if case.kind == "required":
            if not passed:
                required.append(case)
        elif passed == (key in OPTIONAL_FAILURES):
            optional.append(case)
    return required, optional


def counts(draft: Draft) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for kind in ("required", "format", "optional"):
        cases = [c for c in draft.cases if c.kind == kind]
        passed = sum(c.got is (Status.OK if c.valid else Status.INVALID_RESPONSE) for c in cases)
        out[kind] = (passed, len(cases))
    return out


def describe(case: Case) -> str:
    return f"{case.file} / {case.group} / {case.description}: valid={case.valid}, got {case.got}"


@pytest.fixture(scope="module")
def suite_upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


async def run_draft(name: str, upstream: Upstream, start: Callable[[str], SidecarProcess]) -> Draft:
    draft = collect(name)
    serve(upstream, draft.cases)
    sidecar = start(draft.config(upstream.url))
    await run_cases(sidecar.unix_target, draft.cases)
    return draft


@pytest.mark.parametrize("name", list(DRAFTS))
async def test_official_suite_through_the_sidecar(
    name: str, suite_upstream: Upstream, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    draft = await run_draft(name, suite_upstream, start_sidecar)
    required, optional = verdicts(draft)
    assert not required, f"{len(required)} required tests failed:\n" + "\n".join(
        map(describe, required[:50])
    )
    assert not optional, (
        "optional tests whose outcome differs from OPTIONAL_FAILURES (a listed test that "
        "passes now should leave the list):\n" + "\n".join(map(describe, optional[:50]))
    )


def main() -> None:
    """Prints the per-draft table (and every optional failure)."""
    upstream = Upstream().start()
    rows = []
    started: list[SidecarProcess] = []

    def start(config: str) -> SidecarProcess:
        workdir = Path(tempfile.mkdtemp(prefix="suite-"))
        started.append(SidecarProcess(workdir, config).start(timeout=120))
        return started[-1]

    try:
        for name in DRAFTS:
            try:
                draft = asyncio.run(run_draft(name, upstream, start))
            finally:
                for proc in started:
                    proc.kill()
                    shutil.rmtree(proc.workdir, ignore_errors=True)
                started.clear()
            c = counts(draft)
            rows.append((name, c))
            for case in draft.cases:
                if case.kind != "required" and case.got is not (
                    Status.OK if case.valid else Status.INVALID_RESPONSE
                ):
                    print(f"optional failure [{name}] {describe(case)}")
    finally:
        upstream.stop()
    print("| draft | required | optional: format (`formats: assert`) | optional: other |")
    print("|---|---|---|---|")
    for name, c in rows:
        cells = [f"{c[k][0]} / {c[k][1]}" for k in ("required", "format", "optional")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
