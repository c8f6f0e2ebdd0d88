"""Runs: submit, read, follow (Server-Sent Events) and cancel.

``POST /v1/runs`` answers 202 with the run's id at once, or with ``?wait=true`` 200 and
the finished run. A client that disconnects while waiting does not cancel the run unless
it asked for that with ``?cancel_on_disconnect=true``.

``GET /v1/runs/{id}/events`` is FastAPI's own Server-Sent Events support
(``fastapi.sse``): the endpoint yields events; FastAPI frames them, sends a ``: ping``
comment when nothing else was sent for 15 s (so proxies keep the stream), and cancels the
generator when the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from .._brain import Brain
from .._runs.record import Run, RunEvent, RunSpec
from .deps import get_brain
from .models import RunAccepted, RunCreate, RunOut

router = APIRouter(prefix="/v1/runs", tags=["runs"])

BrainDep = Annotated[Brain, Depends(get_brain)]


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


async def find_run(run_id: str, brain: BrainDep) -> Run:
    """The run, or 404: a dependency, so that the answer is decided before a stream starts."""
    return brain.runs.get(run_id)  # RunNotFound -> 404


@router.get("/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    run: Annotated[Run, Depends(find_run)],
    last_event_id: Annotated[int | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """The run's events as Server-Sent Events, in order, then a ``done`` event.

    Each event has ``id`` (its sequence number, for ``Last-Event-ID`` on reconnect),
    ``event`` (plan, call, result, final, error, state, retry) and JSON ``data``. The
    ``done`` event's data is the finished run without its events.
    """
    start = 0 if last_event_id is None else last_event_id + 1
    async for event in run.follow(from_seq=start):
        yield _sse(event)
    summary = orjson.dumps(RunOut.of(run, events=False).model_dump()).decode()
    yield ServerSentEvent(event="done", raw_data=summary)


def _sse(event: RunEvent) -> ServerSentEvent:
    data = orjson.dumps(event.as_dict()).decode()
    return ServerSentEvent(id=str(event.seq), event=event.type, raw_data=data)
