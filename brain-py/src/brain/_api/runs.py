"""Runs: submit, read, follow (Server-Sent Events) and cancel.

``POST /v1/runs`` answers 202 with the run's id at once, or with ``?wait=true`` 200 and
the finished run. A client that disconnects while waiting does not cancel the run unless
it asked for that with ``?cancel_on_disconnect=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from .._run import Run, RunEvent, RunSpec
from .._service import Brain
from .deps import get_brain
from .models import RunAccepted, RunCreate, RunOut

router = APIRouter(prefix="/v1/runs", tags=["runs"])

BrainDep = Annotated[Brain, Depends(get_brain)]

#: An SSE comment is sent when nothing else was for this long, so proxies keep the stream.
KEEPALIVE_S = 15.0


@router.post(
    "",
    status_code=202,
    response_model=RunAccepted | RunOut,
    responses={
        200: {"model": RunOut, "description": "With ?wait=true: the finished run."},
        429: {"description": "Too many runs in flight; retry after Retry-After seconds."},
        503: {"description": "Starting or draining; retry (elsewhere) after Retry-After."},
    },
)
async def create_run(
    body: RunCreate,
    request: Request,
    response: Response,
    brain: BrainDep,
    wait: Annotated[bool, Query(description="Answer when the run has finished.")] = False,
    cancel_on_disconnect: Annotated[
        bool, Query(description="With wait=true: cancel the run if the client goes away.")
    ] = False,
) -> RunAccepted | RunOut | Response:
    if not brain.ready and not brain.runs.draining:
        waiting = ", ".join(k for k, v in brain.readiness().items() if not v and k != "draining")
        return JSONResponse(
            {"detail": f"the brain is not ready: waiting for {waiting}"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    if body.tools is not None:
        known = brain.catalog.names()
        errors = [
            {
                "type": "unknown_tool",
                "loc": ["body", "tools", i],
                "msg": f"no tool named {name!r}",
                "input": name,
            }
            for i, name in enumerate(body.tools)
            if name not in known
        ]
        if errors:
            raise RequestValidationError(errors)
    spec = RunSpec(
        task=body.task,
        system_prompt=body.system_prompt,
        tools=tuple(body.tools) if body.tools is not None else None,
        max_steps=body.max_steps,
        max_tool_calls_per_step=body.max_tool_calls_per_step,
        deadline_s=body.deadline_s,
    )
    run = brain.runs.submit(spec)  # AdmissionRefused -> 429/503 (see app.py)
    response.headers["Location"] = f"/v1/runs/{run.id}"
    if not wait:
        return RunAccepted.of(run)
    await _wait_unless_gone(request, run, cancel_on_disconnect)
    response.status_code = 200
    return RunOut.of(run, events=True)


async def _wait_unless_gone(request: Request, run: Run, cancel_on_disconnect: bool) -> None:
    """Wait for the run; if the client disconnects first, cancel it only when asked."""
    done = asyncio.ensure_future(run.wait())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (done, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not run.finished and cancel_on_disconnect:
        run.request_cancel("client disconnected")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.get("/{run_id}", response_model=RunOut)
async def get_run(
    run_id: str,
    brain: BrainDep,
    events: Annotated[bool, Query(description="Include the event record.")] = True,
) -> RunOut:
    return RunOut.of(brain.runs.get(run_id), events=events)  # RunNotFound -> 404


@router.post("/{run_id}/cancel", response_model=RunOut)
async def cancel_run(run_id: str, brain: BrainDep) -> RunOut:
    """Cancel a run; its tool calls in flight are cancelled in the sidecar. Idempotent."""
    run = brain.runs.cancel(run_id, "cancelled by a client")
    await run.wait(timeout=5)
    return RunOut.of(run, events=False)


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def run_events(
    run_id: str,
    brain: BrainDep,
    last_event_id: Annotated[int | None, Header()] = None,
) -> StreamingResponse:
    """The run's events as Server-Sent Events, in order, then a ``done`` event.

    Each event has ``id`` (its sequence number, for ``Last-Event-ID`` on reconnect),
    ``event`` (plan, call, result, final, error, state, retry) and JSON ``data``.
    """
    run = brain.runs.get(run_id)
    start = 0 if last_event_id is None else last_event_id + 1
    return StreamingResponse(
        _sse(run, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(run: Run, seq: int) -> AsyncIterator[bytes]:
    while True:
        while seq < len(run.events):
            yield _frame(run.events[seq])
            seq += 1
        if run.finished:
            break
        if not await run.wait_news(timeout=KEEPALIVE_S):
            yield b": keep-alive\n\n"
    summary = orjson.dumps(RunOut.of(run, events=False).model_dump())
    yield b"event: done\ndata: " + summary + b"\n\n"


def _frame(event: RunEvent) -> bytes:
    data = orjson.dumps(event.as_dict())
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)
