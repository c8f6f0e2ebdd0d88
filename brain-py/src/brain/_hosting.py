"""``HostedModel``: a local model loaded once, warmed up, and served through one batcher.

The lifecycle of the router's sentence embedder (``_embedding.py``); the local planner's
causal LM has an engine of its own (``_engine/``: continuous batching, not whole batches)::

    start() ──► _load()       on a worker thread (it takes seconds; the loop keeps serving)
            ──► DynamicBatcher(_forward) started, warm-up items sent through it
            ──► ready         (``/readyz`` waits for it)
    submit(item) ──► the batcher ──► _forward(batch) on the batcher's one thread
    aclose() ──► the batcher stops (queued items fail with BatcherClosed); not ready

:meth:`HostedModel.start` is idempotent and safe to call concurrently: every caller waits
for the one load. A subclass says how to load its model (:meth:`~HostedModel._load`) and
how to run one batch (:meth:`~HostedModel._forward`); :func:`offline_hub` and
:func:`pick_device` are what both loads start with.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from ._batcher import BatcherOptions, DynamicBatcher
from ._metrics import BatcherMetrics

__all__ = ["HostedModel", "offline_hub", "pick_device"]

In = TypeVar("In")
Out = TypeVar("Out")


def offline_hub() -> None:
    """Make sure no Hugging Face library reaches for the network (there is none here)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pick_device(requested: str | None = None) -> str:
    """``requested``, else ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class HostedModel(abc.ABC, Generic[In, Out]):
    """A model behind a :class:`~brain.DynamicBatcher`, loaded and warmed up by :meth:`start`."""

    #: What the model is, for logs ("embedding model").
    kind = "model"
    #: Where the subclass logs.
    log = logging.getLogger("brain.hosting")

    def __init__(
        self,
        model_dir: Path | None,
        *,
        batcher: BatcherOptions,
        name: str,
        warmup: Sequence[In],
        size_of: Callable[[In], int] | None = None,
        metrics: BatcherMetrics | None = None,
    ) -> None:
        self.model_dir = model_dir
        #: Where the model runs ("cuda", "cpu"); :meth:`_load` sets it.
        self.device = "cpu"
        self.batcher: DynamicBatcher[In, Out] | None = None
        self._batcher_options = batcher
        self._batcher_name = name
        self._warmup = tuple(warmup)
        self._size_of = size_of
        self._metrics = metrics
        self._starting: asyncio.Future[None] | None = None
        self._ready = False

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the model and set :attr:`device` (blocking; runs on a worker thread)."""

    @abc.abstractmethod
    def _forward(self, items: list[In]) -> Sequence[Out]:
        """One batch through the model, one output per item (on the batcher's thread)."""

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed up."""
        return self._ready

    async def start(self) -> None:
        """Load the model (on a thread) and warm it up; then :attr:`ready`.

        Idempotent, and safe to call concurrently: every caller waits for the one load.
        """
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self._load)
        batcher: DynamicBatcher[In, Out] = DynamicBatcher(
            self._forward,
            options=self._batcher_options,
            size_of=self._size_of,
            name=self._batcher_name,
            metrics=self._metrics,
        )
        batcher.start()
        self.batcher = batcher  # before the warm-up, so that aclose() stops it if that fails
        # Warm-up through the batcher's own thread, batched as real requests will be: the
        # first forward pass allocates and (on GPU) picks kernels, and the model is never
        # entered from two threads.
        await asyncio.gather(*(batcher.submit(item) for item in self._warmup))
        self._ready = True
        self.log.info(
            "%s ready dir=%s device=%s seconds=%.2f",
            self.kind,
            self.model_dir,
            self.device,
            time.perf_counter() - started,
        )

    async def submit(self, item: In, *, timeout: float | None = None) -> Out:
        """``item`` through the model in some batch (loading the model first if need be)."""
        await self.start()
        assert self.batcher is not None
        return await self.batcher.submit(item, timeout=timeout)

    async def aclose(self) -> None:
        """Stop loading, stop the batcher; items still queued fail with ``BatcherClosed``."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self.batcher is not None:
            await self.batcher.aclose()
        self._ready = False
