"""The brain's Prometheus metrics, on a registry of their own (one per server).

| name | type | labels |
|---|---|---|
| ``brain_runs_total`` | counter | ``status`` (the run's final state) |
| ``brain_runs_in_flight`` | gauge | (runs admitted, not finished; the HPA scales on it) |
| ``brain_runs_rejected_total`` | counter | ``reason`` (``limit`` or ``draining``) |
| ``brain_run_duration_seconds`` | histogram | |
| ``brain_tool_calls_total`` | counter | ``status`` (``ok``, ..., ``malformed``, ``refused``) |
| ``brain_planner_duration_seconds`` | histogram | ``planner`` |
| ``brain_batch_size`` | histogram | ``batcher`` |
| ``brain_batch_queue_wait_seconds`` | histogram | ``batcher`` |
| ``brain_batch_model_seconds`` | histogram | ``batcher`` |
| ``brain_batch_items_total`` | counter | ``batcher`` (``rate()`` of it is items/s) |
| ``brain_batch_failures_total`` | counter | ``batcher`` |
| ``brain_llm_tokens_total`` | counter | ``phase`` (``prefill``, ``cached``, ``decode``) |
| ``brain_llm_decode_batch_size`` | histogram | (sequences in one decode step) |
| ``brain_llm_step_seconds`` | histogram | ``phase`` (``prefill``, ``decode``) |
| ``brain_llm_queue_depth`` | gauge | (requests waiting for a slot) |
| ``brain_llm_running_sequences`` | gauge | (sequences in the decode batch) |
| ``brain_llm_kv_tokens`` | gauge | (token positions held in the batch's KV cache) |
| ``brain_llm_requests_total`` | counter | ``outcome`` |
| ``brain_http_connections`` | gauge | (API connections open and admitted) |
| ``brain_http_refused_total`` | counter | ``reason`` (``connections``, ``head_timeout``, |
| | | ``body_too_large``, ``body_timeout``) |

No label carries a run, agent or tool-call id (unbounded cardinality).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["BatcherMetrics", "BrainMetrics", "HttpMetrics", "LLMMetrics"]

_RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class BatcherMetrics:
    """What every :class:`~brain._batcher.DynamicBatcher` reports, labelled by its name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "brain_batch_size",
            "Items per model call.",
            ["batcher"],
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "brain_batch_queue_wait_seconds",
            "Time an item waited between submit and its batch starting.",
            ["batcher"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.model_seconds = Histogram(
            "brain_batch_model_seconds",
            "Time of one model call (one batch).",
            ["batcher"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.items = Counter(
            "brain_batch_items",
            "Items run through the model; rate() gives items per second.",
            ["batcher"],
            registry=registry,
        )
        self.failures = Counter(
            "brain_batch_failures",
            "Batches whose model call failed (every item of the batch failed).",
            ["batcher"],
            registry=registry,
        )

    def observe_batch(
        self,
        batcher: str,
        *,
        size: int,
        queue_waits: Sequence[float],
        model_seconds: float,
        failed: bool,
    ) -> None:
        self.batch_size.labels(batcher).observe(size)
        wait = self.queue_wait.labels(batcher)
        for seconds in queue_waits:
            wait.observe(seconds)
        self.model_seconds.labels(batcher).observe(model_seconds)
        self.items.labels(batcher).inc(size)
        if failed:
            self.failures.labels(batcher).inc()


class LLMMetrics:
    """What the local LM engine (``brain._engine``) reports: one engine per process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "brain_llm_tokens",
            "Tokens through the local LM: prompt tokens computed (prefill), prompt tokens "
            "served from the prefix cache (cached), tokens generated (decode); rate() is tokens/s.",
            ["phase"],
            registry=registry,
        )
        self.decode_batch_size = Histogram(
            "brain_llm_decode_batch_size",
            "Sequences in one batched decode step.",
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.step_seconds = Histogram(
            "brain_llm_step_seconds",
            "Time of one engine step: a prefill (one sequence) or a batched decode step.",
            ["phase"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "brain_llm_queue_depth", "Requests waiting for a slot in the batch.", registry=registry
        )
        self.running = Gauge(
            "brain_llm_running_sequences", "Sequences in the decode batch.", registry=registry
        )
        self.kv_tokens = Gauge(
            "brain_llm_kv_tokens",
            "Token positions held in the decode batch's KV cache (rows x span).",
            registry=registry,
        )
        self.requests = Counter(
            "brain_llm_requests",
            "Generation requests by outcome: stop, length, error, cancelled, timeout, rejected.",
            ["outcome"],
            registry=registry,
        )


class HttpMetrics:
    """What the API's HTTP server reports of its bounds (``brain._api.limits``)."""

    REASONS = ("connections", "head_timeout", "body_too_large", "body_timeout")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "brain_http_connections",
            "Connections to the API open and admitted (refused ones are not counted).",
            registry=registry,
        )
        self._refused = Counter(
            "brain_http_refused",
            "Connections and requests the API refused, by bound: connections (over a "
            "connection cap: 503), head_timeout (closed before a request head arrived), "
            "body_too_large (413), body_timeout (408).",
            ["reason"],
            registry=registry,
        )
        self._by_reason = {r: self._refused.labels(r) for r in self.REASONS}

    def refused(self, reason: str) -> None:
        self._by_reason[reason].inc()


class BrainMetrics:
    """Every metric of one brain process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("brain_runs", "Runs finished, by final state.", ["status"], registry=r)
        self.runs_in_flight = Gauge(
            "brain_runs_in_flight", "Runs admitted and not yet finished.", registry=r
        )
        self.runs_rejected = Counter(
            "brain_runs_rejected",
            "Runs refused at admission: over the in-flight limit, or draining.",
            ["reason"],
            registry=r,
        )
        self.run_duration = Histogram(
            "brain_run_duration_seconds",
            "Wall time of a run from admission to its final state.",
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "brain_tool_calls",
            "Tool calls proposed by planners, by outcome.",
            ["status"],
            registry=r,
        )
        self.planner_duration = Histogram(
            "brain_planner_duration_seconds",
            "Time a planner took to propose one step.",
            ["planner"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.batcher = BatcherMetrics(r)
        self.llm = LLMMetrics(r)
        self.http = HttpMetrics(r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
