"""``DynamicBatcher``: many agents' model requests, one batched model call at a time.

How an item travels::

    submit(item) ──► queue ──► collector task ──► executor thread ──► model(batch)
       ▲            (bounded)   (model idle: at once;                    │
       │                         else what gathered while it was busy,   │
       │                         up to max_batch_size)                   │
       └──────── future ◄──── outputs[i] for items[i] ◄──────────────────┘

* **Collect while busy, never tax the lone request.** An item that finds the batcher idle
  (no batch running, nothing queued) runs at once, alone or with whatever arrived in the
  same event-loop turn: a single agent pays no batching delay. Items that arrive while a
  batch runs gather in the queue and form the next batch as soon as the model is free:
  the busier the model, the bigger the batches. This is the scheduling of continuous
  micro-batching (vLLM's ``AsyncMicrobatchTokenizer``, Triton's dynamic batcher with no
  queue delay); ``max_wait_ms`` only lets a batch formed behind a busy model linger for
  company, measured from its first item's arrival (which usually lies in the past).
* **One model call at a time, off the event loop.** The model runs on one dedicated
  executor thread, so the loop keeps serving agents while it computes, and a GPU sees one
  batch at a time.
* **Callers that have gone are skipped.** A cancelled ``submit`` (or one past its
  ``timeout``) cancels its future; the collector leaves such items out, so they never
  reach the model, and it never sets a result on a future that is already done.
* **Failures stay in their batch.** An exception from the model, or an output list of the
  wrong length, fails every item of that batch and no other.
* **Bounds.** At most ``max_queue`` items wait; past that ``submit`` raises
  :class:`BatcherOverloaded` at once. ``max_batch_tokens`` (with ``size_of``) caps a
  batch by total size, e.g. prompt tokens, as well as by count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._exceptions import BatcherClosed, BatcherError, BatcherOverloaded
from ._metrics import BatcherMetrics

__all__ = ["BatcherOptions", "DynamicBatcher"]

log = logging.getLogger("brain.batcher")

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True, kw_only=True, slots=True)
class BatcherOptions:
    """How a :class:`DynamicBatcher` forms batches."""

    #: Most items in one model call.
    max_batch_size: int = 32
    #: Longest the first item of a batch that gathered behind a busy model waits for
    #: company, counted from its arrival. An item that finds the batcher idle never waits.
    max_wait_ms: float = 5.0
    #: Most items waiting; more are refused with :class:`BatcherOverloaded`.
    max_queue: int = 10_000
    #: Most total ``size_of(item)`` in one batch (e.g. prompt tokens); ``None``: no cap.
    #: A single item larger than this still runs, alone.
    max_batch_tokens: int | None = None
    #: A batch starts at the latest this long before the earliest deadline among its
    #: items, so that they have time to run instead of timing out in the queue.
    deadline_margin_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be at least 1")


class _Item(Generic[In, Out]):
    __slots__ = ("deadline", "enqueued", "future", "idle", "value")

    def __init__(
        self, value: In, future: asyncio.Future[Out], deadline: float | None, *, idle: bool
    ) -> None:
        self.value = value
        self.future = future
        self.deadline = deadline
        self.enqueued = time.monotonic()
        #: It found the batcher idle: its batch starts at once (the idle fast path).
        self.idle = idle


class DynamicBatcher(Generic[In, Out]):
    """Batches ``submit`` calls from many tasks into calls of ``model(list_of_items)``.

    ``model`` is a plain (blocking) function from a list of inputs to a sequence of
    outputs of the same length, ``outputs[i]`` answering ``inputs[i]``. Use as an async
    context manager, or call :meth:`start` and :meth:`aclose`::

        async with DynamicBatcher(embed_texts, options=BatcherOptions(max_batch_size=64)) as b:
            vector = await b.submit("a sentence")
    """

    def __init__(
        self,
        model: Callable[[list[In]], Sequence[Out]],
        *,
        options: BatcherOptions | None = None,
        size_of: Callable[[In], int] | None = None,
        name: str = "model",
        metrics: BatcherMetrics | None = None,
    ) -> None:
        self.options = options or BatcherOptions()
        if self.options.max_batch_tokens is not None and size_of is None:
            raise ValueError("max_batch_tokens needs size_of")
        self.name = name
        self._model = model
        self._size_of = size_of
        self._metrics = metrics
        self._queue: collections.deque[_Item[In, Out]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One thread: batches run one after another, and a GPU model is never entered
        # from two threads at once.
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        # A batch is on the executor thread (set by the collector around ``_run``).
        self._busy = False
        #: Batches started at once because their first item found the batcher idle.
        self.idle_starts = 0
        #: Batches run so far and their sizes; for tests, demos and averages.
        self.batches = 0
        self.items = 0

    async def __aenter__(self) -> DynamicBatcher[In, Out]:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the collector task. Idempotent."""
        if self._closed:
            raise BatcherClosed(f"batcher {self.name!r} is closed")
        if self._task is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"batcher-{self.name}")
            self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.name}")

    async def aclose(self) -> None:
        """Stop; items still queued fail with :class:`BatcherClosed`."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        closed = BatcherClosed(f"batcher {self.name!r} closed")
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(closed)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    async def submit(self, item: In, *, timeout: float | None = None) -> Out:
        """Run ``item`` through the model in some batch and return its output.

        Raises :class:`TimeoutError` when ``timeout`` passes first (the item is then left
        out of any batch not yet formed), :class:`BatcherOverloaded` when the queue is
        full, and whatever the model raised for this item's batch.
        """
        if self._closed:
            raise BatcherClosed(f"batcher {self.name!r} is closed")
        if self._task is None:
            self.start()
        if len(self._queue) >= self.options.max_queue:
            raise BatcherOverloaded(
                f"batcher {self.name!r} has {len(self._queue)} items queued (the limit)"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = not self._busy and not self._queue
        self._queue.append(_Item(item, future, deadline, idle=idle))
        self._wake.set()
        # Awaiting the future directly: if this task is cancelled (or times out), the
        # future is cancelled too, which is how the collector knows to skip the item.
        async with asyncio.timeout(timeout):
            return await future

    # ---------------------------------------------------------------- collector

    async def _collect(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = await self._next_batch()
                if batch:
                    self._busy = True
                    try:
                        await self._run(batch)
                    finally:
                        self._busy = False

    def _drop_gone(self) -> None:
        """Forget queued items whose caller has gone (cancelled or timed out)."""
        if any(item.future.done() for item in self._queue):
            self._queue = collections.deque(i for i in self._queue if not i.future.done())

    async def _next_batch(self) -> list[_Item[In, Out]]:
        """The next batch: at once when its first item found the batcher idle, else when
        full, ``max_wait_ms`` after the first item arrived, or near an item's deadline."""
        o = self.options
        self._drop_gone()
        if not self._queue:
            return []
        if self._queue[0].idle:
            self.idle_starts += 1
            return self._take()
        until = self._queue[0].enqueued + o.max_wait_ms / 1000
        while len(self._queue) < o.max_batch_size and not self._tokens_full():
            margin = o.deadline_margin_ms / 1000
            deadlines = [i.deadline - margin for i in self._queue if i.deadline is not None]
            wait = min([until, *deadlines]) - time.monotonic()
            if wait <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._drop_gone()
            if not self._queue:
                return []
        return self._take()

    def _tokens_full(self) -> bool:
        cap = self.options.max_batch_tokens
        if cap is None or self._size_of is None:
            return False
        return sum(self._size_of(i.value) for i in self._queue) >= cap

    def _take(self) -> list[_Item[In, Out]]:
        """Pop the next batch off the queue, within the count and token caps."""
        o = self.options
        batch: list[_Item[In, Out]] = []
        tokens = 0
        while self._queue and len(batch) < o.max_batch_size:
            item = self._queue[0]
            if item.future.done():
                self._queue.popleft()
                continue
            if o.max_batch_tokens is not None and self._size_of is not None:
                size = self._size_of(item.value)
                if batch and tokens + size > o.max_batch_tokens:
                    break
                tokens += size
            batch.append(self._queue.popleft())
        return batch

    async def _run(self, batch: list[_Item[In, Out]]) -> None:
        assert self._executor is not None
        started = time.monotonic()
        inputs = [item.value for item in batch]
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._model, inputs)
            if len(outputs) != len(inputs):
                raise BatcherError(
                    f"model {self.name!r} returned {len(outputs)} outputs for {len(inputs)} inputs"
                )
        except asyncio.CancelledError:
            closed = BatcherClosed(f"batcher {self.name!r} closed while its batch ran")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(closed)
            raise
        except Exception as exc:
            log.warning("batch failed batcher=%s size=%d error=%r", self.name, len(batch), exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            failed = True
        else:
            failed = False
            for item, output in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(output)
        finished = time.monotonic()
        self.batches += 1
        self.items += len(batch)
        if self._metrics is not None:
            self._metrics.observe_batch(
                self.name,
                size=len(batch),
                queue_waits=[started - item.enqueued for item in batch],
                model_seconds=finished - started,
                failed=failed,
            )
