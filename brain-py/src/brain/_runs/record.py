"""A run's record: what was asked, where it stands, and every event on the way.

States::

    pending ──► running ──┬──► succeeded   the planner gave a final answer
                          ├──► failed      max_steps, a planner error, a bug
                          ├──► timed_out   the run's deadline passed
                          └──► cancelled   cancelled by a client, or by the drain

``stop_reason`` says why in one word (``final_answer``, ``max_steps``, ``deadline``,
``planner_error``, ``cancelled``, ``shutdown``, ``internal_error``).

Events (``plan``, ``call``, ``result``, ``final``, ``error``, ``state``) are appended in
order with a sequence number and the seconds since the run was created. Followers (the
SSE endpoint) wait on :meth:`Run.follow`, which yields every event once, in order, and
ends after the run finished.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Run", "RunEvent", "RunSpec", "RunState"]


class RunState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        return self not in (RunState.PENDING, RunState.RUNNING)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSpec:
    """What a client asks for. Limits have defaults; every run has all of them."""

    task: str
    system_prompt: str | None = None
    #: Tools the run may use (names); ``None``: every tool the sidecar serves.
    tools: tuple[str, ...] | None = None
    max_steps: int = 10
    max_tool_calls_per_step: int = 8
    #: Wall-clock budget of the whole run, in seconds.
    deadline_s: float = 120.0


@dataclass(frozen=True, slots=True)
class RunEvent:
    seq: int
    type: str
    #: Seconds since the run was created.
    t: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "t": round(self.t, 6), "data": self.data}


@dataclass(eq=False, slots=True)
class Run:
    spec: RunSpec
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: RunState = RunState.PENDING
    stop_reason: str | None = None
    answer: str | None = None
    error: str | None = None
    steps: int = 0
    tool_calls: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    events: list[RunEvent] = field(default_factory=list)
    #: Set by :meth:`request_cancel`; the agent reads it to tell a client's cancel or the
    #: drain from other cancellation.
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None
    _created_mono: float = field(default_factory=time.monotonic)
    _deadline: float = 0.0
    _news: asyncio.Event = field(default_factory=asyncio.Event)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._deadline = self._created_mono + self.spec.deadline_s

    @property
    def deadline(self) -> float:
        """The run's deadline on the ``time.monotonic()`` clock."""
        return self._deadline

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return end - self.created_at

    def record(self, type_: str, **data: Any) -> RunEvent:
        """Append an event and wake followers."""
        event = RunEvent(len(self.events), type_, time.monotonic() - self._created_mono, data)
        self.events.append(event)
        news, self._news = self._news, asyncio.Event()
        news.set()
        return event

    def start(self) -> None:
        self.state = RunState.RUNNING
        self.started_at = time.time()
        self.record("state", state=self.state.value)

    def finish(
        self,
        state: RunState,
        reason: str,
        *,
        answer: str | None = None,
        error: str | None = None,
    ) -> None:
        """Set the final state (once; later calls are ignored) and wake every waiter."""
        if self.finished:
            return
        self.state = state
        self.stop_reason = reason
        self.answer = answer
        self.error = error
        self.finished_at = time.time()
        if self.started_at is None:
            self.started_at = self.finished_at
        self.record("state", state=state.value, stop_reason=reason, error=error)
        self._done.set()

    def request_cancel(self, reason: str = "cancelled") -> bool:
        """Cancel the run's task; False if the run already finished."""
        if self.finished:
            return False
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.task is not None:
            self.task.cancel()
        else:
            self.finish(RunState.CANCELLED, reason)
        return True

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run finished; False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        except TimeoutError:
            return False
        return True

    async def wait_news(self, timeout: float | None = None) -> bool:
        """Wait for the next event; False if ``timeout`` passed first."""
        news = self._news
        try:
            async with asyncio.timeout(timeout):
                await news.wait()
        except TimeoutError:
            return False
        return True

    async def follow(self, *, from_seq: int = 0) -> AsyncIterator[RunEvent]:
        """Every event from ``from_seq`` on, in order, as it happens; ends when finished."""
        seq = from_seq
        while True:
            while seq < len(self.events):
                yield self.events[seq]
                seq += 1
            if self.finished:
                return
            await self.wait_news()

    def summary(self) -> dict[str, Any]:
        """The run without its events."""
        return {
            "id": self.id,
            "state": self.state.value,
            "stop_reason": self.stop_reason,
            "task": self.spec.task,
            "answer": self.answer,
            "error": self.error,
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
        }
