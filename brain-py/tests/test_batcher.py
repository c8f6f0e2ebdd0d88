"""DynamicBatcher: batch formation, waiting bounds, cancellation, failure isolation, mapping."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from brain._batcher import BatcherOptions, DynamicBatcher
from brain._exceptions import BatcherError, BatcherOverloaded
from brain._metrics import BrainMetrics


class Model:
    """Records every batch; can be held on a gate (a threading.Event: it runs on a thread)."""

    def __init__(self, fn=lambda x: x * 2) -> None:  # type: ignore[no-untyped-def]
        self.batches: list[list[int]] = []
        self.started_at: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fn = fn

    def __call__(self, items: list[int]) -> list[int]:
        self.started_at.append(time.monotonic())
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return [self.fn(x) for x in items]


async def test_64_concurrent_submits_run_as_batches_of_16() -> None:
    model = Model()
    # A long max_wait: batches are formed by size, not by the clock.
    options = BatcherOptions(max_batch_size=16, max_wait_ms=5_000)
    async with DynamicBatcher(model, options=options) as batcher:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(64)))
    assert results == [i * 2 for i in range(64)]
    assert [len(b) for b in model.batches] == [16, 16, 16, 16]
    assert sorted(x for b in model.batches for x in b) == list(range(64))


async def test_a_lone_request_does_not_wait_max_wait_ms() -> None:
    """The idle fast path: an item that finds the batcher idle runs at once.

    ``max_wait_ms`` is an hour: without the fast path the request would sit in the queue
    for it and the guard below (a deadline on the wait, not a speed limit) would fail.
    """
    model = Model()
    options = BatcherOptions(max_batch_size=16, max_wait_ms=3_600_000)
    async with DynamicBatcher(model, options=options) as batcher:
        async with asyncio.timeout(30):
            assert await batcher.submit(21) == 42
            # Idle again once it is done: the next lone request also runs at once.
            assert await batcher.submit(4) == 8
        assert batcher.idle_starts == 2
    assert model.batches == [[21], [4]]


async def test_items_arriving_while_the_model_is_busy_form_the_next_batch() -> None:
    """Collect while busy: what queued behind a running batch runs as one batch."""
    model = Model()
    model.gate.clear()
    options = BatcherOptions(max_batch_size=16, max_wait_ms=0)
    async with DynamicBatcher(model, options=options) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(model.entered.wait, 5)
        # Submitted one event-loop turn apart while the model is held on its gate.
        later = []
        for i in range(1, 6):
            later.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0)
        assert batcher.queued == 5
        model.gate.set()
        async with asyncio.timeout(30):
            assert await first == 0
            assert await asyncio.gather(*later) == [2, 4, 6, 8, 10]
        assert batcher.idle_starts == 1
    assert model.batches == [[0], [1, 2, 3, 4, 5]]


async def test_the_item_deadline_ends_the_wait_early() -> None:
    model = Model()
    options = BatcherOptions(max_batch_size=16, max_wait_ms=10_000)
    async with DynamicBatcher(model, options=options) as batcher:
        started = time.monotonic()
        # Alone, with max_wait_ms of 10 s: its 0.3 s deadline starts the batch in time.
        assert await batcher.submit(2, timeout=0.3) == 4
        assert time.monotonic() - started < 0.3
    assert model.batches == [[2]]


async def test_an_item_that_times_out_in_the_queue_never_runs() -> None:
    model = Model()
    model.gate.clear()
    async with DynamicBatcher(model, options=BatcherOptions(max_wait_ms=1)) as batcher:
        busy = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(model.entered.wait, 5)
        with pytest.raises(TimeoutError):
            await batcher.submit(1, timeout=0.05)
        model.gate.set()
        assert await busy == 0
        assert await batcher.submit(3) == 6
    assert model.batches == [[0], [3]]


async def test_cancelled_items_never_reach_the_model() -> None:
    model = Model()
    model.gate.clear()
    options = BatcherOptions(max_batch_size=4, max_wait_ms=1)
    async with DynamicBatcher(model, options=options) as batcher:
        # Occupy the model thread with a first batch so the next items queue up.
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(model.entered.wait, 5)
        queued = {i: asyncio.create_task(batcher.submit(i)) for i in range(1, 9)}
        await asyncio.sleep(0.01)
        for i in (2, 3, 5, 8):
            queued[i].cancel()
        await asyncio.sleep(0)
        model.gate.set()
        assert await first == 0
        for i, task in queued.items():
            if i in (2, 3, 5, 8):
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                assert await task == i * 2
    seen = {x for b in model.batches for x in b}
    assert seen == {0, 1, 4, 6, 7}


async def test_a_model_exception_fails_only_its_batch() -> None:
    def fn(x: int) -> int:
        if x == 13:
            raise ValueError("unlucky")
        return x

    model = Model(fn)
    options = BatcherOptions(max_batch_size=4, max_wait_ms=5_000)
    async with DynamicBatcher(model, options=options) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(10, 18)), return_exceptions=True
        )
    # Batches [10..13] and [14..17]: only the first contains 13.
    assert all(isinstance(r, ValueError) for r in results[:4])
    assert results[4:] == [14, 15, 16, 17]


async def test_wrong_output_length_fails_the_batch() -> None:
    def short(items: list[int]) -> list[int]:
        return items[:-1]

    async with DynamicBatcher(short, options=BatcherOptions(max_wait_ms=1)) as batcher:
        with pytest.raises(BatcherError, match="returned 1 outputs for 2 inputs"):
            await asyncio.gather(batcher.submit(1), batcher.submit(2))


async def test_token_budget_caps_the_batch() -> None:
    model = Model()
    options = BatcherOptions(max_batch_size=64, max_wait_ms=200, max_batch_tokens=10)
    async with DynamicBatcher(model, options=options, size_of=lambda x: x) as batcher:
        await asyncio.gather(*(batcher.submit(x) for x in [4, 4, 4, 4, 20, 1]))
    assert [sum(b) for b in model.batches[:2]] == [8, 8]
    assert [20] in model.batches  # larger than the budget: runs alone


async def test_a_full_queue_refuses_at_once() -> None:
    model = Model()
    model.gate.clear()
    options = BatcherOptions(max_batch_size=1, max_wait_ms=0, max_queue=2)
    async with DynamicBatcher(model, options=options) as batcher:
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(model.entered.wait, 5)
        waiting = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(BatcherOverloaded):
            await batcher.submit(3)
        model.gate.set()
        assert await asyncio.gather(running, *waiting) == [0, 2, 4]


async def test_metrics_record_batches() -> None:
    metrics = BrainMetrics()
    options = BatcherOptions(max_batch_size=8, max_wait_ms=5_000)
    async with DynamicBatcher(Model(), options=options, metrics=metrics.batcher) as batcher:
        await asyncio.gather(*(batcher.submit(i) for i in range(16)))
    samples = {
        (s.name, s.labels.get("batcher")): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("brain_batch_size_count", "model")] == 2
    assert samples[("brain_batch_size_sum", "model")] == 16
    assert samples[("brain_batch_items_total", "model")] == 16
    assert samples[("brain_batch_queue_wait_seconds_count", "model")] == 16


@settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=80),
    max_batch=st.integers(1, 20),
    cancel=st.sets(st.integers(0, 79), max_size=10),
)
def test_results_map_to_their_callers(items: list[int], max_batch: int, cancel: set[int]) -> None:
    """Whatever the batch sizes and cancellations, each caller gets f(its own item)."""

    async def scenario() -> None:
        seen: list[int] = []

        def model(batch: list[tuple[int, int]]) -> list[tuple[int, int]]:
            seen.extend(i for i, _ in batch)
            # Output order follows input order; the value encodes who asked.
            return [(i, value * 3 + 1) for i, value in batch]

        options = BatcherOptions(max_batch_size=max_batch, max_wait_ms=1)
        async with DynamicBatcher(model, options=options) as batcher:
            tasks = [asyncio.create_task(batcher.submit((i, v))) for i, v in enumerate(items)]
            for i in cancel:
                if i < len(tasks):
                    tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, (value, result) in enumerate(zip(items, results, strict=True)):
            if i in cancel:
                assert isinstance(result, asyncio.CancelledError)
                assert i not in seen
            else:
                assert result == (i, value * 3 + 1)
        assert len(seen) == len(set(seen))

    asyncio.run(scenario())
