"""A small OpenAI-compatible chat-completions server that answers from a script.

It mounts ``POST /v1/chat/completions`` on a :class:`harness.Upstream`. A script is a list
of *turns*: turn ``n`` answers a request whose conversation already holds ``n`` assistant
messages, so concurrent runs each follow the script independently. A turn is an assistant
message (a dict) or a function of the request body returning one, which lets a test
assert on what the model was sent (tool messages, tools offered) and choose the reply.

Every request body and its headers are recorded: tests check that the API key the
sidecar injects arrived, and that the brain never sent it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from harness import Upstream

Turn = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]

PATH = "/v1/chat/completions"


def tool_call(call_id: str, name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """One entry of an assistant message's ``tool_calls``; string arguments are sent as is."""
    raw = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def calls(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": list(entries)}


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def tool_messages(body: dict[str, Any]) -> dict[str, str]:
    """The request's tool messages, by tool_call_id."""
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


class ScriptedLLM:
    def __init__(self, upstream: Upstream, turns: list[Turn], *, model: str = "scripted") -> None:
        self.turns = turns
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures: list[str] = []
        self._ids = itertools.count(1)
        upstream.route("POST", PATH, self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        if turn >= len(self.turns):
            return web.json_response(
                {"error": {"message": f"no turn {turn} in the script"}}, status=500
            )
        script = self.turns[turn]
        try:
            message = script(body) if callable(script) else script
        except AssertionError as exc:  # reported to the test, which fails on it
            self.failures.append(f"turn {turn}: {exc}")
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        return web.json_response(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
