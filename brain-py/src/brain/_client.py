"""``SidecarClient``: every agent's tool calls over one long-lived gRPC stream.

How a call travels::

    call() ──► outbox ──► writer task ──► Dispatch stream ──► sidecar
      ▲                   (one frame per loop                   │
      │                    iteration; under load                │
      │                    one per write_linger)                │
      └──── future ◄── reader task ◄── ResultFrame ◄────────────┘

* **Transport.** The Dispatch stream is a gRPC stream on ``target``, or, with
  ``ClientOptions.frames_socket``, the same stream framed directly on the sidecar's frames
  socket (``_frames``), which costs this process far less per frame; ``Invoke`` and
  ``ListTools`` always use gRPC.
* **Coalescing.** ``call()`` encodes its ``ToolCall`` once (by hand, ``_wire``), appends
  it to the outbox and wakes the writer; the writer runs on the next loop iteration and
  sends everything queued by then as one frame, the calls' bytes joined (a
  ``DispatchFrame`` is its calls' fields one after another, so no frame message is
  built). Under load it lingers: when the previous frame left less than
  ``write_linger`` ago and many calls are in flight, the next waits for the rest of that
  interval, so frames carry more calls the busier the client is, and a lone call never
  waits. Each frame costs the brain far more than each
  call in it (a grpc.aio write and read, loop wake-ups; ``tests/bench/transport_floor.py``):
  this is what keeps the Python cost per call low when thousands of agents call at once.
  The sidecar batches results the same way.
* **Exactly one outcome per call.** A call ends with the sidecar's result, a local
  TIMEOUT result (the sidecar did not answer within the call's timeout plus a grace
  period; see ``_expire``), :class:`SidecarUnavailable` if the stream broke
  after the call was sent, or :class:`ClientClosed`.
* **Cancellation.** Cancelling the awaiting task sends a cancel frame; the sidecar drops
  the upstream request.
* **Reconnects.** When the stream breaks, calls sent on it fail, and the client opens a
  new stream with exponential backoff and full jitter (``_backoff.Backoff``, shared with
  the tool-list refresher). Calls made meanwhile wait in the outbox, bounded by their own
  deadlines. gRPC errors become the brain's exceptions in one place
  (``_exceptions.map_grpc_errors``).
* **Bounds.** At most ``max_inflight`` calls are pending; past that ``call()`` returns an
  OVERLOADED result at once. Frames are capped at ``max_frame_calls`` calls. A call's
  deadline is forgotten the moment the call ends (see ``_Deadlines``), so what the client
  keeps follows the calls in flight, not the call rate times the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import orjson

from ._backoff import Backoff
from ._exceptions import ClientClosed, SidecarError, SidecarUnavailable, map_grpc_errors
from ._frames import FramedStream, FramedStreamError
from ._proto.dispatch.v1 import dispatch_pb2 as pb
from ._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from ._types import Status, ToolInfo, ToolResult
from ._wire import CANCEL_TAG, encode_call, frame_field, parse_results, timeout_ms

__all__ = ["ClientOptions", "SidecarClient"]

log = logging.getLogger("brain.client")

_EMPTY_ARGS = b"{}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientOptions:
    """Tuning for :class:`SidecarClient`; the defaults suit a pod with thousands of agents."""

    #: Timeout (seconds) of a call that does not pass its own.
    default_timeout: float = 30.0
    #: How long past a call's timeout the client waits for the sidecar's own TIMEOUT
    #: result before answering TIMEOUT itself.
    grace: float = 1.0
    #: Calls pending at once; more get an OVERLOADED result immediately.
    max_inflight: int = 100_000
    #: Calls per Dispatch frame.
    max_frame_calls: int = 4096
    #: Seconds between frames under load: a frame that follows the previous one sooner
    #: waits for the rest of this interval for company, only while more than four times
    #: as many calls are in flight as are queued (the event loop's timers round it up to
    #: a millisecond). 0 turns the linger off.
    write_linger: float = 0.0005
    #: Reconnect backoff: first delay and cap, in seconds (full jitter).
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    #: Largest message accepted from the sidecar (results can carry big documents).
    max_receive_bytes: int = 64 * 1024 * 1024
    #: The sidecar's frames socket (its ``--listen frames:PATH``): when set, the Dispatch
    #: stream travels there, framed without gRPC (``_frames``), at a fraction of grpc.aio's
    #: cost per frame; ``Invoke`` and ``ListTools`` still use ``target``.
    frames_socket: str | None = None
    #: On the frames socket, ask the sidecar for a shared memory region for large results
    #: (framing version 2, Linux): a 100 KB result is then copied once out of memory both
    #: processes map instead of crossing the socket. The sidecar may decline (its
    #: ``--frames-shared-region 0``); the stream then carries everything, as it also does
    #: while the region is full.
    frames_shared_memory: bool = True
    #: Bearer token for a sidecar listening on TCP (the unix socket needs none). This is
    #: the brain's own credential to its sidecar, never a tool's.
    auth_token: str | None = None


class _Call:
    """A pending call. ``wire`` is its ``DispatchFrame.calls`` entry, encoded (``None``
    once sent); ``generation`` is the stream it was sent on (0 = not yet sent);
    ``deadline`` is the bucket of :class:`_Deadlines` that holds its id."""

    __slots__ = ("deadline", "future", "generation", "wire")

    def __init__(self, wire: bytes, future: asyncio.Future[ToolResult], deadline: set[str]):
        self.wire: bytes | None = wire
        self.future = future
        self.deadline = deadline
        self.generation = 0


class _Deadlines:
    """The deadlines of pending calls, in buckets of :attr:`TICK` seconds (a hashed
    timing wheel), each bucket with one event-loop timer that expires what is left in it.

    A call's id leaves its bucket the moment the call ends, so the entries follow the
    calls in flight; an emptied bucket waits for its timer, so there are at most as many
    buckets as ticks in the longest timeout, whatever the call rate. Written here rather
    than with one ``loop.call_at`` per call because a timer per call measured about three
    times the per-call cost of the old heap (asyncio and uvloop alike), and buckets about
    half of it; a deadline fires up to one tick late, well inside the grace.
    """

    TICK = 0.01

    __slots__ = ("_buckets", "_expire")

    def __init__(self, expire: Callable[[str], None]) -> None:
        self._buckets: dict[int, set[str]] = {}
        self._expire = expire

    def add(self, loop: asyncio.AbstractEventLoop, call_id: str, delay: float) -> set[str]:
        """Expire ``call_id`` after ``delay`` seconds on ``loop``. Returns its bucket: the
        call's end removes the id from it (``bucket.discard(call_id)``)."""
        tick = int((loop.time() + delay) / self.TICK) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            loop.call_at(tick * self.TICK, self._fire, tick)
        bucket.add(call_id)
        return bucket

    def _fire(self, tick: int) -> None:
        bucket = self._buckets.pop(tick, None)
        while bucket:
            self._expire(bucket.pop())

    def __len__(self) -> int:
        """Calls with a deadline still ahead (for tests and metrics)."""
        return sum(map(len, self._buckets.values()))

    @property
    def buckets(self) -> int:
        return len(self._buckets)


class SidecarClient:
    """Client for the sidecar's ``Dispatcher`` service.

    ``target`` is a gRPC target: ``unix:/run/tandem/sidecar.sock`` or ``127.0.0.1:50051``.
    Use as an async context manager, or call :meth:`aclose` when done::

        async with SidecarClient("unix:/tmp/sidecar.sock") as client:
            result = await client.call("weather", {"city": "Oslo"}, agent_id="a1")
    """

    def __init__(self, target: str, *, options: ClientOptions | None = None) -> None:
        self.target = target
        self.options = options or ClientOptions()
        self._channel: grpc.aio.Channel | None = None
        #: The loop the client runs on, set by :meth:`start`: ``asyncio.get_running_loop``
        #: costs a ``getpid`` system call on CPython 3.11, twice per call otherwise.
        self._loop: asyncio.AbstractEventLoop
        self._stub: pb_grpc.DispatcherStub | None = None
        self._dispatch: grpc.aio.StreamStreamMultiCallable | None = None
        self._calls: dict[str, _Call] = {}
        self._outbox: list[_Call] = []
        self._deadlines = _Deadlines(self._expire)
        self._cancels: list[str] = []
        self._ids = itertools.count(1)
        self._wake_writer = asyncio.Event()
        self._connected = asyncio.Event()
        self._generation = 0
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._metadata: tuple[tuple[str, str], ...] = ()
        #: Number of Dispatch streams opened so far (1 + reconnects); for tests and metrics.
        self.streams_opened = 0
        #: Number of frames written; for measuring coalescing.
        self.frames_sent = 0

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SidecarClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the channel and start the stream. Idempotent."""
        if self._closed:
            raise ClientClosed("client is closed")
        if self._channel is not None:
            return
        o = self.options
        self._loop = asyncio.get_running_loop()
        self._channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                # gRPC core sends the socket path as :authority for unix targets, which
                # HTTP/2 servers such as hyper (tonic) reject as malformed.
                ("grpc.default_authority", "localhost"),
                ("grpc.max_receive_message_length", o.max_receive_bytes),
                ("grpc.max_send_message_length", o.max_receive_bytes),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.initial_reconnect_backoff_ms", int(o.backoff_initial * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(o.backoff_max * 1000)),
            ],
        )
        self._stub = pb_grpc.DispatcherStub(self._channel)  # type: ignore[no-untyped-call]
        if o.auth_token:
            self._metadata = (("authorization", f"Bearer {o.auth_token}"),)
        # Dispatch without the generated request serializer: the writer hands gRPC the
        # frame's bytes, joined from the calls' encodings (see ``_write``).
        self._dispatch = self._channel.stream_stream(
            _DISPATCH_METHOD,
            request_serializer=None,
            # Both transports hand the reader a frame's results (``_wire``).
            response_deserializer=parse_results,
        )
        self._tasks = [asyncio.create_task(self._run_streams(), name="sidecar-streams")]

    async def wait_connected(self, timeout: float) -> None:
        """Wait until a Dispatch stream is open; raise :class:`SidecarUnavailable` if not."""
        await self.start()
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError as exc:
            raise SidecarUnavailable(
                f"no stream to {self.dispatch_target} within {timeout}s"
            ) from exc

    @property
    def dispatch_target(self) -> str:
        """Where the Dispatch stream goes: ``frames:PATH`` or the gRPC target."""
        socket = self.options.frames_socket
        return f"frames:{socket}" if socket else self.target

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Calls waiting for their result."""
        return len(self._calls)

    async def aclose(self) -> None:
        """Stop the stream; pending calls fail with :class:`ClientClosed`."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        # Not ``await task`` under suppress(CancelledError): that also swallowed a
        # cancellation of aclose itself, so a task that did not end hung it for good.
        if self._tasks:
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled():
                task.result()  # what it died of, if anything
        self._fail_calls(lambda c: True, ClientClosed("client closed"))
        if self._channel is not None:
            await self._channel.close()

    # ---------------------------------------------------------------- calls

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | bytes | None = None,
        *,
        agent_id: str = "",
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        select: Sequence[str] = (),
    ) -> ToolResult:
        """Run ``tool`` with ``arguments`` (a mapping, or JSON bytes) on the Dispatch stream.

        ``select`` lists JSON Pointers: the result is then ``{pointer: value}`` with just
        those parts of the upstream's document. Returns the result whatever its status;
        raises only for transport problems (:class:`SidecarUnavailable`,
        :class:`ClientClosed`).
        """
        if self._closed:
            raise ClientClosed("client is closed")
        if self._channel is None:
            await self.start()
        call_id = str(next(self._ids))
        if len(self._calls) >= self.options.max_inflight:
            return ToolResult.local(
                call_id, Status.OVERLOADED, "client in-flight limit reached", retry_after_ms=100
            )
        if timeout is None:
            timeout = self.options.default_timeout
        wire = encode_call(
            call_id, tool, _encode_arguments(arguments), agent_id, timeout, metadata, select
        )
        future: asyncio.Future[ToolResult] = self._loop.create_future()
        deadline = self._deadlines.add(self._loop, call_id, timeout + self.options.grace)
        pending = _Call(wire, future, deadline)
        self._calls[call_id] = pending
        self._outbox.append(pending)
        self._wake_writer.set()
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(call_id)
            raise

    async def invoke(
        self,
        tool: str,
        arguments: Mapping[str, Any] | bytes | None = None,
        *,
        agent_id: str = "",
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        select: Sequence[str] = (),
    ) -> ToolResult:
        """Like :meth:`call`, but as one unary ``Invoke`` RPC (no coalescing)."""
        stub = await self._ready_stub()
        if timeout is None:
            timeout = self.options.default_timeout
        msg = _tool_call(str(next(self._ids)), tool, arguments, agent_id, timeout, metadata, select)
        with map_grpc_errors(self.target):
            reply = await stub.Invoke(
                msg, timeout=timeout + self.options.grace, metadata=self._metadata
            )
        return ToolResult(reply)

    async def list_tools(self, *, timeout: float = 10.0) -> list[ToolInfo]:
        """Every tool the sidecar serves, with parsed schemas."""
        stub = await self._ready_stub()
        with map_grpc_errors(self.target):
            reply = await stub.ListTools(
                pb.ListToolsRequest(),
                timeout=timeout,
                wait_for_ready=True,
                metadata=self._metadata,
            )
        return [ToolInfo.from_pb(t) for t in reply.tools]

    async def _ready_stub(self) -> pb_grpc.DispatcherStub:
        if self._closed:
            raise ClientClosed("client is closed")
        await self.start()
        assert self._stub is not None
        return self._stub

    def _abandon(self, call_id: str) -> _Call | None:
        """The caller gave up on ``call_id``: forget it and tell the sidecar if it was sent."""
        pending = self._finish(call_id)
        if pending is not None and pending.generation == self._generation and pending.generation:
            self._cancels.append(call_id)
            self._wake_writer.set()
        return pending

    def _finish(self, call_id: str) -> _Call | None:
        """Forget ``call_id`` and its deadline; the one way a call leaves."""
        pending = self._calls.pop(call_id, None)
        if pending is not None:
            pending.deadline.discard(call_id)
        return pending

    def _expire(self, call_id: str) -> None:
        """The call's deadline (its timeout plus the grace) passed with no result from
        the sidecar: answer TIMEOUT and tell the sidecar to stop."""
        pending = self._abandon(call_id)
        if pending is not None and not pending.future.done():
            pending.future.set_result(
                ToolResult.local(
                    call_id,
                    Status.TIMEOUT,
                    "no result from the sidecar before the call's deadline"
                    + ("" if self._connected.is_set() else " (not connected)"),
                )
            )

    # ---------------------------------------------------------------- stream

    async def _run_streams(self) -> None:
        """Keep one Dispatch stream open; on failure fail its calls and reconnect."""
        assert self._dispatch is not None
        backoff = Backoff(self.options.backoff_initial, self.options.backoff_max)
        # Closing cancels this task, but a stream being opened may turn the cancellation
        # into an error of its own (grpc.aio's AioRpcError CANCELLED): the flag ends the
        # loop then.
        while not self._closed:
            self._generation += 1
            generation = self._generation
            stream = self._open_stream()
            writer: asyncio.Task[None] | None = None
            reason = "stream ended"
            where = self.dispatch_target
            try:
                await stream.wait_for_connection()
                self.streams_opened += 1
                self._connected.set()
                if backoff.attempt:
                    log.info("sidecar stream re-established target=%s", where)
                backoff.reset()
                writer = asyncio.create_task(self._write(stream, generation))
                await self._read(stream)
                reason = "the sidecar ended the stream (draining or restarting)"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except FramedStreamError as exc:
                reason = str(exc)
            except asyncio.CancelledError:
                stream.cancel()
                raise
            finally:
                self._connected.clear()
                if writer is not None:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await writer
            stream.cancel()
            lost = self._fail_calls(
                lambda c, g=generation: c.generation == g,  # type: ignore[misc]
                SidecarUnavailable(f"stream to {where} broke: {reason}"),
            )
            self._cancels.clear()
            delay = backoff.next_delay()
            # A framed stream that never opened is a sidecar not up yet (gRPC's
            # wait_for_ready waits for it silently); a stream that broke is news.
            log.log(
                logging.WARNING if writer is not None or lost else logging.INFO,
                "sidecar stream lost target=%s reason=%r failed_calls=%d retry_in=%.3fs",
                where,
                reason,
                lost,
                delay,
            )
            await asyncio.sleep(delay)

    def _open_stream(self) -> Any:
        """A new Dispatch stream: framed when a frames socket is configured, else gRPC."""
        if self.options.frames_socket:
            return FramedStream(
                self.options.frames_socket,
                max_receive_bytes=self.options.max_receive_bytes,
                shared_memory=self.options.frames_shared_memory,
            )
        assert self._dispatch is not None
        return self._dispatch(wait_for_ready=True, metadata=self._metadata)

    async def _write(self, stream: Any, generation: int) -> None:
        """Send the outbox as frames, one batch per wake-up."""
        limit = self.options.max_frame_calls
        linger = self.options.write_linger
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._wake_writer.wait()
            # Linger for company under load: more results are due, and the calls of the
            # agents they wake then share this frame.
            wait = last + linger - loop.time()
            if wait > 0 and len(self._outbox) * _COMPANY < len(self._calls):
                await asyncio.sleep(wait)
            self._wake_writer.clear()
            while self._outbox or self._cancels:
                batch = self._outbox[:limit]
                del self._outbox[:limit]
                parts = [frame_field(CANCEL_TAG, c.encode()) for c in self._cancels]
                self._cancels = []
                for pending in batch:
                    wire = pending.wire
                    if wire is None or pending.future.done():
                        continue
                    parts.append(wire)
                    pending.wire = None
                    pending.generation = generation
                frame = b"".join(parts)
                try:
                    await stream.write(frame)
                except Exception as exc:
                    # The stream is ending (sidecar draining, restarting or gone); the
                    # reader sees why and the calls of this frame fail with it.
                    log.debug("write to the sidecar stream failed: %r", exc)
                    return
                self.frames_sent += 1
                last = loop.time()

    async def _read(self, stream: Any) -> None:
        """Resolve the futures of arriving results."""
        finish = self._finish
        while True:
            frame = await stream.read()
            if frame is grpc.aio.EOF or frame is None:
                return
            for result in frame:
                pending = finish(result.call_id)
                if pending is not None and not pending.future.done():
                    pending.future.set_result(result)

    def _fail_calls(self, which: Callable[[_Call], bool], exc: SidecarError) -> int:
        failed = [cid for cid, c in self._calls.items() if which(c)]
        for call_id in failed:
            pending = self._finish(call_id)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(exc)
        return len(failed)


#: The Dispatch method, as the generated stub names it.
_DISPATCH_METHOD = "/dispatch.v1.Dispatcher/Dispatch"
#: The writer lingers while more than this many times the queued calls are in flight.
_COMPANY = 4


def _tool_call(
    call_id: str,
    tool: str,
    arguments: Mapping[str, Any] | bytes | None,
    agent_id: str,
    timeout: float,
    metadata: Mapping[str, str] | None,
    select: Sequence[str],
) -> pb.ToolCall:
    msg = pb.ToolCall(
        call_id=call_id,
        agent_id=agent_id,
        tool=tool,
        arguments=_encode_arguments(arguments),
        timeout_ms=timeout_ms(timeout),
    )
    if select:
        # Only when given: setting an empty repeated field still costs about a microsecond.
        msg.select.extend(select)
    if metadata:
        msg.metadata.update(metadata)
    return msg


def _encode_arguments(arguments: Mapping[str, Any] | bytes | None) -> bytes:
    if arguments is None:
        return _EMPTY_ARGS
    # A dict first: nearly every call passes one (an exact type check is the cheapest).
    if type(arguments) is not dict and isinstance(arguments, bytes | bytearray | memoryview):
        return bytes(arguments)
    try:
        return orjson.dumps(arguments)
    except orjson.JSONEncodeError:
        # orjson stops at 64-bit integers; the standard library writes any (a tool
        # schema's `minimum: -18446744073709551615` inside an LLM request, say).
        try:
            return json.dumps(arguments, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError):
            pass
        raise
