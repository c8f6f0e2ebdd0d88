"""Decode throughput of the local LM engine: one request at a time vs N at once.

    python brain-py/scripts/engine_bench.py                  # bundled model, CPU or GPU
    python brain-py/scripts/engine_bench.py --random-weights --config-dir DIR   # GPU box

Each request has a short prompt and generates exactly ``--tokens`` tokens (EOS ignored),
so both runs decode the same number of tokens. ``decode tokens/s`` is tokens divided by
the time spent in decode steps (the engine's own clock); ``wall tokens/s`` includes
prefill and scheduling. With ``--random-weights`` the architecture comes from
``--config-dir`` (config.json and tokenizer files) with random weights: same shapes and
speed, no 98 MB GGUF to carry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from brain._engine.engine import Engine, EngineOptions, GenerationRequest
from brain._engine.weights import LoadedModel, load_model, prepare_model_dir
from brain._hosting import offline_hub, pick_device


def random_model(config_dir: Path, device: str | None) -> LoadedModel:
    offline_hub()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    chosen = pick_device(device)
    dtype = torch.float32
    if chosen.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    torch.manual_seed(0)
    model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(config_dir), local_files_only=True)
    model = model.to(chosen).eval()
    return LoadedModel(model, tokenizer, chosen, dtype, config_dir)


async def measure(engine: Engine, loaded: LoadedModel, n: int, tokens: int) -> dict[str, float]:
    prompts = [
        list(loaded.tokenizer(f"Agent {i}: plan the next step for task number {i}.")["input_ids"])
        for i in range(n)
    ]
    before = engine.stats()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            engine.generate(GenerationRequest(prompt_ids=p, max_new_tokens=tokens, ignore_eos=True))
            for p in prompts
        )
    )
    wall = time.perf_counter() - started
    after = engine.stats()
    decoded = after.decode_tokens - before.decode_tokens
    seconds = after.decode_seconds - before.decode_seconds
    steps = after.decode_steps - before.decode_steps
    return {
        "requests": n,
        "decode_tokens": decoded,
        "decode_tokens_per_s": decoded / seconds if seconds else 0.0,
        "wall_tokens_per_s": n * tokens / wall,
        "mean_decode_batch": decoded / steps if steps else 0.0,
        "wall_s": wall,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="one-at-a-time requests")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--config-dir", type=Path)
    args = parser.parse_args()
    if args.random_weights:
        if args.config_dir is None:
            parser.error("--random-weights needs --config-dir")
        loaded = random_model(args.config_dir, args.device)
    else:
        loaded = load_model(prepare_model_dir(), device=args.device)
    options = EngineOptions(max_batch=max(16, args.concurrency), cpu_threads=args.threads)
    engine = Engine(loaded, options=options)
    engine.start()
    try:
        await measure(engine, loaded, 2, 4)  # warm-up
        alone = [await measure(engine, loaded, 1, args.tokens) for _ in range(args.rounds)]
        one = {
            "requests": args.rounds,
            "decode_tokens_per_s": sum(a["decode_tokens"] for a in alone)
            / sum(a["decode_tokens"] / a["decode_tokens_per_s"] for a in alone),
            "wall_tokens_per_s": args.rounds * args.tokens / sum(a["wall_s"] for a in alone),
            "mean_decode_batch": 1.0,
        }
        many = await measure(engine, loaded, args.concurrency, args.tokens)
    finally:
        await engine.aclose()
    report = {
        "device": loaded.device,
        "dtype": str(loaded.dtype),
        "tokens_per_request": args.tokens,
        "concurrency_1": one,
        f"concurrency_{args.concurrency}": many,
        "speedup_decode": many["decode_tokens_per_s"] / one["decode_tokens_per_s"],
        "speedup_wall": many["wall_tokens_per_s"] / one["wall_tokens_per_s"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
