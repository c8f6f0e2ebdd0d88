"""Tool schemas as users write them, through the real sidecar: drafts by ``$schema`` or
``schema_draft``, shared ``schemas:`` documents and ``schema_files`` (hot reloaded),
``formats:``, ListTools as written and inlined, numbers beyond 128 bits and beyond an
f64's digits from tools.yaml to the upstream's request body, and config errors that name
the tool and field. (The official suite: test_json_schema_suite.)"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from brain import SidecarClient, Status

from harness import REPO, SidecarProcess, Upstream, replace_file, scrape, sidecar_binary

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

BIG = "-18446744073709551615"  # below i64::MIN: beyond what a 64-bit loader keeps
HUGE = "340282366920938463463374607431768211455"  # u128::MAX


def tools_yaml(base: str) -> str:
    return f"""
defaults:
  timeout: 10s
  schema_draft: 7
schemas:
  "https://schemas.example.com/geo.json":
    definitions:
      lat: {{type: number, minimum: -90, maximum: 90}}
      lon: {{type: number, minimum: -180, maximum: 180}}
tools:
  - name: place
    description: Draft-07 by the file's default, coordinates from a shared document.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema:
      type: object
      properties:
        lat: {{$ref: "https://schemas.example.com/geo.json#/definitions/lat"}}
        lon: {{$ref: "https://schemas.example.com/geo.json#/definitions/lon"}}
        tags: {{items: [{{type: string}}, {{type: integer}}]}}
      required: [lat, lon]
    request: {{method: POST, url: {base}/echo}}
  - name: old
    description: Draft 4 by its own $schema; formats annotated only.
    egress: {{allow: [127.0.0.0/8]}}
    formats: annotate
    input_schema:
      $schema: "http://json-schema.org/draft-04/schema#"
      type: object
      properties:
        n: {{type: number, maximum: 3, exclusiveMaximum: true}}
        day: {{type: string, format: date}}
    request: {{method: POST, url: {base}/echo}}
  - name: dated
    description: Formats asserted (the default), IDN hostnames included.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema:
      type: object
      properties:
        day: {{type: string, format: date}}
        host: {{type: string, format: idn-hostname}}
    request: {{method: POST, url: {base}/echo}}
  - name: big
    description: Integers beyond 64 bits in the schema and in a templated body.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema:
      $schema: "https://json-schema.org/draft/2020-12/schema"
      type: object
      properties:
        n: {{type: integer, minimum: {BIG}}}
      required: [n]
    request:
      method: POST
      url: {base}/raw
      body: {{n: "{{n}}", ceiling: {HUGE}}}
"""


@pytest.fixture
def stack(upstream: Upstream, start_sidecar: Start) -> tuple[Upstream, SidecarProcess, list[bytes]]:
    bodies: list[bytes] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def raw(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.json_response({"ok": True})

    upstream.route("POST", "/echo", echo)
    upstream.route("POST", "/raw", raw)
    return upstream, start_sidecar(tools_yaml(upstream.url)), bodies


async def test_drafts_shared_documents_and_formats(
    stack: tuple[Upstream, SidecarProcess, list[bytes]], client_for: MakeClient
) -> None:
    _, sidecar, _ = stack
    client = client_for(sidecar.unix_target)

    async def status(tool: str, args: dict[str, object]) -> Status:
        return (await client.call(tool, args, agent_id="a")).status

    assert await status("place", {"lat": 59.9, "lon": 10.7, "tags": ["x", 1, None]}) is Status.OK
    r = await client.call("place", {"lat": 91, "lon": 10.7}, agent_id="a")
    assert r.status is Status.INVALID_ARGUMENTS
    assert [v.instance_path for v in r.violations] == ["/lat"], r.violations
    # Draft-07 array-form items: the second item must be an integer.
    assert await status("place", {"lat": 0, "lon": 0, "tags": ["x", "y"]}) is (
        Status.INVALID_ARGUMENTS
    )
    # Draft-04 boolean exclusiveMaximum; format annotated only.
    assert await status("old", {"n": 2.5, "day": "yesterday"}) is Status.OK
    assert await status("old", {"n": 3}) is Status.INVALID_ARGUMENTS
    # Asserted formats, idn-hostname included (the crate's idna support).
    assert await status("dated", {"day": "2026-12-02", "host": "실례.테스트"}) is Status.OK
    assert await status("dated", {"day": "yesterday"}) is Status.INVALID_ARGUMENTS
    assert await status("dated", {"host": "〮실례.테스트"}) is Status.INVALID_ARGUMENTS


async def test_list_tools_serves_schemas_as_written_and_inlined(
    stack: tuple[Upstream, SidecarProcess, list[bytes]], client_for: MakeClient
) -> None:
    _, sidecar, _ = stack
    tools = {t.name: t for t in await client_for(sidecar.unix_target).list_tools()}
    place = tools["place"]
    lat = place.input_schema["properties"]["lat"]
    assert lat == {"$ref": "https://schemas.example.com/geo.json#/definitions/lat"}
    assert place.input_schema_inlined is not None
    assert place.input_schema_inlined["properties"]["lat"] == {
        "type": "number",
        "minimum": -90,
        "maximum": 90,
    }
    assert place.parameters == place.input_schema_inlined
    assert tools["dated"].input_schema_inlined is None
    assert tools["dated"].parameters == tools["dated"].input_schema
    assert tools["old"].input_schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    # Beyond 64 bits, parsed exactly by the brain.
    assert tools["big"].input_schema["properties"]["n"]["minimum"] == int(BIG)


async def test_integers_beyond_64_bits_reach_the_upstream_exactly(
    stack: tuple[Upstream, SidecarProcess, list[bytes]], client_for: MakeClient
) -> None:
    _, sidecar, bodies = stack
    client = client_for(sidecar.unix_target)
    r = await client.call("big", f'{{"n": {BIG}}}'.encode(), agent_id="a")
    assert r.status is Status.OK, r
    assert len(bodies) == 1
    assert f'"n":{BIG}'.encode() in bodies[0], bodies[0]
    assert f'"ceiling":{HUGE}'.encode() in bodies[0], bodies[0]
    below = "-18446744073709551616"
    r = await client.call("big", f'{{"n": {below}}}'.encode(), agent_id="a")
    assert r.status is Status.INVALID_ARGUMENTS, r
    assert [v.instance_path for v in r.violations] == ["/n"]
    assert len(bodies) == 1


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(sidecar_binary()), "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('$schema: "http://json-schema.org/draft-04/schema#"', '$schema: "http://x/draft-99"'),
            'tool "old": input_schema: $schema: "http://x/draft-99" is not a draft',
        ),
        (
            ("geo.json#/definitions/lon", "geo.json#/definitions/longitude"),
            'tool "place": input_schema: cannot resolve a $ref',
        ),
        (
            (
                '"https://schemas.example.com/geo.json":',
                '"https://schemas.example.com/geo.json#x":',
            ),
            'schemas."https://schemas.example.com/geo.json#x": must not have a fragment',
        ),
        (
            ("lat: {type: number,", "lat: {type: numeric,"),
            'schemas."https://schemas.example.com/geo.json": not a valid JSON Schema',
        ),
        (
            ("    formats: annotate\n", "    formats: sometimes\n"),
            'tool "old": formats: unknown variant `sometimes`',
        ),
        (
            ("  schema_draft: 7\n", "  schema_draft: 8\n"),
            "defaults.schema_draft",
        ),
        (
            ("exclusiveMaximum: true", "exclusiveMaximum: 3"),
            'tool "old": input_schema: not a valid JSON Schema',
        ),
    ],
)
def test_config_errors_name_the_tool_and_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    good = tools_yaml("http://127.0.0.1:9")
    assert change[0] in good
    path = tmp_path / "tools.yaml"
    path.write_text(good.replace(*change))
    proc = check_config(path)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "path",
    ["brain-py/src/demo_tools/tools.yaml", "k8s/base/tools.yaml"],
)
def test_existing_tools_files_still_load(path: str) -> None:
    proc = check_config(REPO / path)
    assert proc.returncode == 0, proc.stderr


# Beyond 128 bits, and a decimal with more digits than an f64 holds: a loader that
# rounds them makes each pair below one number, and the test fails.
MIN = "-340282366920938463463374607431768211457"
BELOW_MIN = "-340282366920938463463374607431768211458"
CONST = "123456789012345678901234567890123456789012345"
NEAR_CONST = "123456789012345678901234567890123456789012346"
PI = "3.14159265358979323846264338327950288"
NEAR_PI = "3.14159265358979323846264338327950289"
FIXED = "98765432109876543210987654321098765432109876543210.0123456789012345678901"


def exact_yaml(base: str) -> str:
    return f"""
tools:
  - name: exact
    egress: {{allow: [127.0.0.0/8]}}
    input_schema:
      type: object
      properties:
        n: {{type: integer, minimum: {MIN}}}
        c: {{const: {CONST}}}
        d: {{enum: [{PI}, 1]}}
    request:
      method: POST
      url: {base}/raw
      body: {{args: "{{*}}", fixed: {FIXED}}}
"""


async def test_numbers_beyond_128_bits_and_f64_digits_are_exact_end_to_end(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    bodies: list[bytes] = []

    async def raw(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.json_response({"ok": True})

    upstream.route("POST", "/raw", raw)
    sidecar = start_sidecar(exact_yaml(upstream.url))
    client = client_for(sidecar.unix_target)

    async def call(args: str) -> tuple[Status, list[str]]:
        r = await client.call("exact", args.encode(), agent_id="a")
        return r.status, [v.instance_path for v in r.violations]

    ok = f'{{"n": {MIN}, "c": {CONST}, "d": {PI}}}'
    assert await call(ok) == (Status.OK, [])
    assert len(bodies) == 1
    body = bodies[0]
    for digits in (f'"n":{MIN}', f'"c":{CONST}', f'"d":{PI}', f'"fixed":{FIXED}'):
        assert digits.encode() in body, (digits, body)
    assert await call(f'{{"n": {BELOW_MIN}}}') == (Status.INVALID_ARGUMENTS, ["/n"])
    assert await call(f'{{"c": {NEAR_CONST}}}') == (Status.INVALID_ARGUMENTS, ["/c"])
    assert await call(f'{{"d": {NEAR_PI}}}') == (Status.INVALID_ARGUMENTS, ["/d"])
    # The f64 nearest to the enum's decimal is another number.
    assert await call('{"d": 3.141592653589793}') == (Status.INVALID_ARGUMENTS, ["/d"])
    assert len(bodies) == 1
    (tool,) = await client.list_tools()
    assert tool.input_schema["properties"]["n"]["minimum"] == int(MIN)
    assert tool.input_schema["properties"]["c"]["const"] == int(CONST)


SHARED_GEO = """
$id: https://schemas.example.com/shared/geo.yaml
$defs:
  lat: {type: number, minimum: -90, maximum: 90}
"""

UNITS = '{"enum": ["metric", "imperial"]}'


def files_yaml(base: str) -> str:
    return f"""
schema_files:
  - shared/geo.yaml
  - {{file: shared/units.json, uri: "urn:tandem:units"}}
tools:
  - name: where
    egress: {{allow: [127.0.0.0/8]}}
    input_schema:
      type: object
      properties:
        lat: {{$ref: "https://schemas.example.com/shared/geo.yaml#/$defs/lat"}}
        units: {{$ref: "urn:tandem:units"}}
    request: {{method: POST, url: {base}/echo}}
"""


async def test_schema_files_are_found_next_to_the_config_and_reloaded(
    upstream: Upstream, tmp_path: Path, client_for: MakeClient
) -> None:
    upstream.json("POST", "/echo", {"ok": True})
    workdir = tmp_path / "run"
    (workdir / "shared").mkdir(parents=True)
    geo = workdir / "shared/geo.yaml"
    geo.write_text(SHARED_GEO)
    (workdir / "shared/units.json").write_text(UNITS)
    sidecar = SidecarProcess(workdir, files_yaml(upstream.url)).start()
    try:
        client = client_for(sidecar.unix_target)

        async def status(args: dict[str, object]) -> Status:
            return (await client.call("where", args, agent_id="a")).status

        assert await status({"lat": 45, "units": "metric"}) is Status.OK
        assert await status({"lat": 91}) is Status.INVALID_ARGUMENTS
        assert await status({"units": "furlongs"}) is Status.INVALID_ARGUMENTS
        # Hot reload watches the schema files too, not only tools.yaml.
        replace_file(geo, SHARED_GEO.replace("maximum: 90", "maximum: 50"))
        for _ in range(200):
            samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
            if samples.get("sidecar_config_reloads_total", {}).get((("result", "success"),)):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no reload:\n{sidecar.log_text()}")
        assert await status({"lat": 45}) is Status.OK
        assert await status({"lat": 51}) is Status.INVALID_ARGUMENTS
    finally:
        sidecar.kill()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"shared/units.json": UNITS},
            "schema_files[0] (shared/geo.yaml): cannot read",
        ),
        (
            {"shared/geo.yaml": "$defs: {lat: {type: number}}", "shared/units.json": UNITS},
            'schema_files[0] (shared/geo.yaml): the document has no "$id"',
        ),
        (
            {"shared/geo.yaml": SHARED_GEO, "shared/units.json": "{enum: ["},
            "schema_files[1] (shared/units.json): invalid JSON",
        ),
        (
            {
                "shared/geo.yaml": SHARED_GEO.replace(
                    "https://schemas.example.com/shared/geo.yaml", "urn:tandem:units"
                ),
                "shared/units.json": UNITS,
            },
            'schema_files[1] (shared/units.json): "urn:tandem:units" is registered twice',
        ),
    ],
)
def test_schema_file_errors_name_the_file_and_field(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    (tmp_path / "shared").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "tools.yaml"
    path.write_text(files_yaml("http://127.0.0.1:9"))
    proc = check_config(path)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    # The same files, complete, load.
    (tmp_path / "shared/geo.yaml").write_text(SHARED_GEO)
    (tmp_path / "shared/units.json").write_text(UNITS)
    assert check_config(path).returncode == 0
