"""The local LM engine with the bundled SmolLM2-135M: batching, routing, cancel, failures.

The model is converted from the bundled GGUF once per machine (into the cache dir) and
loaded from there; generations are short so that the suite stays quick on a small CPU.

On a machine with a GPU the same tests run there with ``BRAIN_TEST_DEVICE=cuda`` (the
engine's dtype then is load_model's choice, bf16; ``BRAIN_TEST_DTYPE=float32`` overrides
it) and ``BRAIN_TEST_MODEL_DIR`` another model directory of the same tokenizer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from brain import ToolInfo
from brain._engine.engine import (
    Engine,
    EngineOptions,
    EngineOverloaded,
    GenerationError,
    GenerationRequest,
)
from brain._engine.grammar import tool_call_grammar
from brain._engine.weights import LoadedModel, load_model, prepare_model_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEATHER = ToolInfo(
    "weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 40},
            "units": {"enum": ["c", "f"]},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
    None,
    5000,
    (),
)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    given = os.environ.get("BRAIN_TEST_MODEL_DIR")
    model_dir = prepare_model_dir(model_dir=Path(given) if given else None)
    model = load_model(model_dir, device=os.environ.get("BRAIN_TEST_DEVICE", "cpu"))
    dtype = os.environ.get("BRAIN_TEST_DTYPE")
    if dtype:
        import torch

        wanted = getattr(torch, dtype)
        model = dataclasses.replace(model, model=model.model.to(wanted), dtype=wanted)
    return model


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(loaded: LoadedModel) -> AsyncIterator[Engine]:
    engine = Engine(loaded, options=EngineOptions(max_batch=16, cpu_threads=1))
    engine.start()
    yield engine
    await engine.aclose()


def ids(loaded: LoadedModel, text: str) -> list[int]:
    return list(loaded.tokenizer(text)["input_ids"])


def literal(text: str) -> str:
    """A grammar that allows exactly ``text``."""
    return f'start: "{text}"\n'


async def settle(engine: Engine) -> None:
    for _ in range(200):
        if engine.stats().running == 0 and engine.stats().waiting == 0:
            return
        await asyncio.sleep(0.05)


async def test_sixteen_callers_share_decode_steps_and_get_their_own_results(
    engine: Engine, loaded: LoadedModel
) -> None:
    before = engine.stats()
    # Each caller's grammar forces its own answer: a result can only be right if the
    # sequence stayed with its caller through joins, leaves and row moves.
    words = [f"caller {i} says {'ab' * (i % 5)}" for i in range(16)]
    prompts = [ids(loaded, f"Say hello number {i}.") for i in range(16)]
    results = await asyncio.gather(
        *(
            engine.generate(GenerationRequest(prompt_ids=p, grammar=literal(w), max_new_tokens=40))
            for p, w in zip(prompts, words, strict=True)
        )
    )
    assert [r.text for r in results] == words
    assert all(r.finish_reason == "stop" for r in results)
    after = engine.stats()
    sizes = {k: n - before.batch_sizes.get(k, 0) for k, n in after.batch_sizes.items()}
    batched = sum(n for k, n in sizes.items() if k > 1)
    assert batched > 0, f"no batched decode step: {sizes}"
    assert max(k for k, n in sizes.items() if n > 0) >= 8, sizes
    await settle(engine)
    assert (engine.stats().kv_rows, engine.stats().kv_bytes) == (0, 0)


async def test_batched_decoding_matches_decoding_alone(engine: Engine, loaded: LoadedModel) -> None:
    """Rows are padded on the left with their own positions: neighbours change nothing,
    neither while they decode nor when they leave (their rows are reused mid-flight)."""
    prompts = [
        ids(loaded, "The capital of France is"),
        ids(loaded, "Write a long story about a robot who learns to paint in the city of"),
        ids(loaded, "1, 2, 3, 4,"),
    ]

    def request(prompt: list[int], tokens: int) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt, max_new_tokens=tokens, ignore_eos=True)

    alone = [(await engine.generate(request(p, 12))).token_ids for p in prompts]
    filler = [ids(loaded, f"Count to {i}:") for i in range(6)]
    # The fillers stop after 2..7 tokens, one by one, while the three go on.
    together = await asyncio.gather(
        *(
            engine.generate(request(p, n))
            for p, n in [
                *zip(filler[:3], (2, 4, 6), strict=True),
                *((p, 12) for p in prompts),
                *zip(filler[3:], (3, 5, 7), strict=True),
            ]
        )
    )
    assert [r.token_ids for r in together[3:6]] == alone


async def test_requests_join_after_the_kv_grew_during_decoding(
    engine: Engine, loaded: LoadedModel
) -> None:
    """The batch's KV grows (new buffers) inside a decode step once the running rows have
    used its 256 spare columns; a request admitted after that, and one leaving, write
    those buffers in place. (Outside inference mode torch refused it and the engine
    stopped: every request in flight failed.)"""
    await settle(engine)
    decoded = 0
    grown = asyncio.Event()
    loop = asyncio.get_running_loop()

    def count(_token: int) -> None:
        nonlocal decoded
        decoded += 1
        if decoded == 270:
            loop.call_soon_threadsafe(grown.set)

    long = asyncio.ensure_future(
        engine.generate(
            GenerationRequest(
                prompt_ids=ids(loaded, "Once upon a time"),
                max_new_tokens=290,
                ignore_eos=True,
                on_token=count,
            )
        )
    )
    await asyncio.wait_for(grown.wait(), 600)
    late = await engine.generate(
        GenerationRequest(prompt_ids=ids(loaded, "Hello"), max_new_tokens=3, ignore_eos=True)
    )
    assert len(late.token_ids) == 3
    assert len((await long).token_ids) == 290
    assert engine.stats().running == 0


async def test_a_cancelled_request_frees_its_slot_and_kv(
    engine: Engine, loaded: LoadedModel
) -> None:
    await settle(engine)
    before = engine.stats()
    request = GenerationRequest(
        prompt_ids=ids(loaded, "Tell me a story."),
        grammar="start: /[a-z]{300}/\n",  # long on purpose
        max_new_tokens=300,
    )
    task = asyncio.create_task(engine.generate(request))
    for _ in range(400):
        if engine.stats().running == 1 and engine.stats().decode_steps > before.decode_steps:
            break
        await asyncio.sleep(0.05)
    running = engine.stats()
    assert (running.running, running.kv_rows) == (1, 1)
    assert running.kv_bytes > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle(engine)
    after = engine.stats()
    assert (after.running, after.kv_rows, after.kv_tokens, after.kv_bytes) == (0, 0, 0, 0)
    assert after.cancelled == before.cancelled + 1


async def test_one_failing_sequence_fails_only_itself(engine: Engine, loaded: LoadedModel) -> None:
    def explode(token: int) -> None:
        raise RuntimeError("the callback broke")

    good = [
        GenerationRequest(prompt_ids=ids(loaded, f"Hi {i}"), grammar=literal(f"ok {i}"))
        for i in range(3)
    ]
    bad = [
        GenerationRequest(prompt_ids=ids(loaded, "Hi"), max_new_tokens=20, on_token=explode),
        GenerationRequest(prompt_ids=ids(loaded, "Hi"), grammar="start: nonsense_rule\n"),
        GenerationRequest(prompt_ids=ids(loaded, "word " * 5000)),  # over max_prompt_tokens
    ]
    results = await asyncio.gather(
        *(engine.generate(r) for r in [*good, *bad]), return_exceptions=True
    )
    assert [getattr(r, "text", r) for r in results[:3]] == ["ok 0", "ok 1", "ok 2"]
    errors = results[3:]
    assert all(isinstance(e, GenerationError | ValueError) for e in errors), errors
    assert "callback broke" in str(errors[0])
    assert "grammar" in str(errors[1])
    assert "at most 4096" in str(errors[2])
    await settle(engine)
    assert engine.stats().kv_rows == 0


async def test_a_request_past_its_deadline_times_out(engine: Engine, loaded: LoadedModel) -> None:
    request = GenerationRequest(
        prompt_ids=ids(loaded, "Tell me a story."),
        grammar="start: /[a-z]{300}/\n",
        max_new_tokens=300,
        deadline=time.monotonic() + 1.0,
    )
    with pytest.raises(TimeoutError):
        await engine.generate(request)
    await settle(engine)
    assert engine.stats().kv_rows == 0


async def test_a_full_queue_refuses_at_once(loaded: LoadedModel) -> None:
    small = Engine(loaded, options=EngineOptions(max_batch=1, max_queue=1, cpu_threads=1))
    small.start()
    try:
        long = GenerationRequest(
            prompt_ids=ids(loaded, "Go."), grammar="start: /[a-z]{200}/\n", max_new_tokens=200
        )
        first = asyncio.create_task(small.generate(long))
        for _ in range(400):
            if small.stats().running == 1:
                break
            await asyncio.sleep(0.05)
        second = asyncio.create_task(small.generate(long))
        await asyncio.sleep(0.1)
        with pytest.raises(EngineOverloaded):
            await small.generate(long)
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
    finally:
        await small.aclose()


async def test_tool_grammar_allows_only_real_tools_with_valid_arguments(
    engine: Engine,
) -> None:
    grammar = tool_call_grammar([WEATHER], max_calls=2)
    compiler = engine.grammars
    tok = engine.loaded.tokenizer

    def accepts(text: str) -> bool:
        matcher = compiler.matcher(grammar)
        return bool(matcher.consume_tokens(tok(text)["input_ids"])) and matcher.is_accepting()

    assert accepts('{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}')
    assert accepts(
        '{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}, '
        '{"name": "weather", "arguments": {"city": "Rome", "units": "f"}}]}'
    )
    assert accepts('{"answer": "It is sunny."}')
    assert not accepts('{"tool_calls": [{"name": "wether", "arguments": {"city": "Oslo"}}]}')
    assert not accepts('{"tool_calls": [{"name": "weather", "arguments": {"town": "Oslo"}}]}')
    assert not accepts('{"tool_calls": [{"name": "weather", "arguments": {"city": ""}}]}')
    assert not accepts(
        '{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo", "units": "k"}}]}'
    )
    calls_only = tool_call_grammar([WEATHER], answer=False)
    matcher = compiler.matcher(calls_only)
    assert not matcher.consume_tokens(tok('{"answer": "x"}')["input_ids"])


async def test_the_shared_prefix_is_computed_once(engine: Engine, loaded: LoadedModel) -> None:
    system = "You are a helpful assistant. " * 12
    before = engine.stats()
    prompts = [ids(loaded, system + f"Question {i}?") for i in range(4)]
    prefix = len(ids(loaded, system))
    await asyncio.gather(
        *(
            engine.generate(GenerationRequest(prompt_ids=p, prefix_len=prefix, max_new_tokens=2))
            for p in prompts
        )
    )
    after = engine.stats()
    assert after.cached_prompt_tokens - before.cached_prompt_tokens >= 4 * (prefix - 1) - 4
    computed = after.prefill_tokens - before.prefill_tokens
    assert computed < prefix + 4 * 8, computed
