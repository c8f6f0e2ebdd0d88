"""python-naive: the stack most teams start with. httpx + ``json`` + ``jsonschema``.

Written as a careful engineer would: one shared ``AsyncClient`` (connection pooling and
keep-alive), validators built once per schema (``Draft202012Validator``, schema checked at
start), the first violation short-circuits validation (cheaper than collecting them all),
a deadline per call. The default asyncio event loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from ..tools import CALL_TIMEOUT_S, MAX_CONNECTIONS, ToolSpec
from .base import Outcome
from .select import select_pointers


class NaiveDispatcher:
    name = "python-naive"

    def __init__(self, tools: Mapping[str, ToolSpec], upstream: str) -> None:
        self._tools = tools
        self._upstream = upstream
        self._validators: dict[str, tuple[Draft202012Validator, Draft202012Validator]] = {}
        for name, spec in tools.items():
            Draft202012Validator.check_schema(spec.input_schema)
            Draft202012Validator.check_schema(spec.output_schema)
            self._validators[name] = (
                Draft202012Validator(spec.input_schema),
                Draft202012Validator(spec.output_schema),
            )
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
            timeout=httpx.Timeout(CALL_TIMEOUT_S),
        )

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self, tool: str, arguments: Mapping[str, Any], *, agent_id: str, select: Sequence[str]
    ) -> Outcome:
        spec = self._tools.get(tool)
        if spec is None:
            return Outcome("UNKNOWN_TOOL")
        check_input, check_output = self._validators[tool]
        if next(check_input.iter_errors(arguments), None) is not None:
            return Outcome("INVALID_ARGUMENTS")
        try:
            response = await self._client.get(
                spec.url(self._upstream), params=spec.params(arguments)
            )
        except httpx.TimeoutException:
            return Outcome("TIMEOUT")
        except httpx.HTTPError:
            return Outcome("UPSTREAM_ERROR")
        if not response.is_success:
            return Outcome("UPSTREAM_ERROR")
        try:
            document = json.loads(response.content)
        except ValueError:
            return Outcome("INVALID_RESPONSE")
        if next(check_output.iter_errors(document), None) is not None:
            return Outcome("INVALID_RESPONSE")
        if select:
            document = select_pointers(document, select)
        return Outcome("OK", len(response.content))

    def counters(self) -> dict[str, float]:
        return {}
