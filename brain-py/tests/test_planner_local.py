"""The local planner with a tiny randomly initialised GPT-2 and a tokenizer built here.

No weights can be downloaded, so the model can only babble: these tests check the
mechanics (loading from a directory, left-padded batched ``generate`` shared by many
runs, stop handling) and that unparseable output is a clear step error, not a crash.
Parsing of well-formed replies is tested on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from brain import ToolInfo
from brain._agent import Agent
from brain._batcher import BatcherOptions
from brain._catalog import ToolCatalog
from brain._exceptions import PlannerOutputError
from brain._metrics import BrainMetrics
from brain._planners.base import PlanningState
from brain._planners.local import LocalOptions, LocalPlanner, build_prompt, parse_output
from brain._runs.manager import RunManager
from brain._runs.record import RunSpec, RunState

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOOLS = [
    ToolInfo(
        "weather",
        "Current weather for a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        None,
        5000,
        (),
    )
]


def build_tiny_model(path: Path) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = [
        '{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}',
        '{"answer": "It is sunny."} You are an agent. Tools: weather. Reply with JSON.',
        "### system ### user ### assistant What is the weather in Tokyo today?",
    ] * 20
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(path)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def planner(model_dir: Path) -> AsyncIterator[LocalPlanner]:
    options = LocalOptions(
        max_new_tokens=12,
        max_prompt_tokens=200,
        device="cpu",
        batcher=BatcherOptions(max_batch_size=8, max_wait_ms=50, max_batch_tokens=100_000),
    )
    local = LocalPlanner(model_dir, options=options)
    await local.start()
    yield local
    await local.aclose()


async def test_the_model_loads_and_warms_up(planner: LocalPlanner) -> None:
    assert planner.ready
    assert planner.device == "cpu"
    assert planner.batcher is not None


async def test_concurrent_runs_share_batched_generation_and_fail_clearly(
    planner: LocalPlanner,
) -> None:
    class NoTools:
        async def call(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("a babbling model must not reach the sidecar")

    metrics = BrainMetrics()
    agent = Agent(NoTools(), planner, metrics)  # type: ignore[arg-type]

    async def fetch() -> list[ToolInfo]:
        return TOOLS

    catalog = ToolCatalog(fetch)
    await catalog.refresh()
    runs = RunManager(agent, catalog, metrics)
    assert planner.batcher is not None
    batches_before, items_before = planner.batcher.batches, planner.batcher.items
    submitted = [runs.submit(RunSpec(task=f"Weather in city {i}?")) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in submitted)), 120)
    batches = planner.batcher.batches - batches_before
    items = planner.batcher.items - items_before
    assert items == 8
    assert batches < 8, "prompts from concurrent runs were not batched"
    for run in submitted:
        # Random weights produce no JSON: a clear planner error, the raw output kept.
        assert (run.state, run.stop_reason) == (RunState.FAILED, "planner_error")
        assert "neither a tool call nor a final answer" in (run.error or "")
        error = next(e for e in run.events if e.type == "error")
        assert "output" in error.data


async def test_batched_generation_matches_generation_alone(planner: LocalPlanner) -> None:
    """Left padding: a prompt's continuation does not depend on its batch neighbours."""
    short, long = "### user\nhi", "### user\nWhat is the weather in Tokyo today? " * 3
    alone = await asyncio.to_thread(planner._generate, [short])
    batched = await asyncio.to_thread(planner._generate, [long, short])
    assert batched[1] == alone[0]


async def test_prompts_describe_tools_and_history(planner: LocalPlanner) -> None:
    state = PlanningState(run_id="r", task="Weather in Oslo?", tools=TOOLS)
    prompt = build_prompt(state)
    assert "weather: Current weather for a city." in prompt
    assert '"required":["city"]' in prompt
    assert prompt.endswith("### assistant\n")


async def test_json_tool_calls_parse() -> None:
    step = parse_output(
        'Sure.\n{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}, '
        '{"name": "weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]}'
    )
    assert [(c.name, c.arguments) for c in step.tool_calls] == [
        ("weather", {"city": "Oslo"}),
        ("weather", {"city": "Rome"}),
    ]


async def test_hermes_tool_call_blocks_parse_and_bad_arguments_become_errors() -> None:
    step = parse_output(
        '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "weather", "arguments": {"city": </tool_call>'
    )
    good, bad = step.tool_calls
    assert good.arguments == {"city": "Oslo"}
    assert (bad.name, bad.arguments) == ("weather", None)
    assert "not valid JSON" in bad.error


async def test_answers_parse() -> None:
    assert parse_output('{"answer": "21 degrees"}').final == "21 degrees"
    assert parse_output("Final answer: 42").final == "42"


async def test_gibberish_is_a_planner_output_error() -> None:
    with pytest.raises(PlannerOutputError) as raised:
        parse_output("lorem ipsum {not json")
    assert raised.value.output == "lorem ipsum {not json"


class ScriptedLocal(LocalPlanner):
    """The real planner path (prompt, batcher, parsing) with scripted model output."""

    def _load(self) -> None:
        self.device = "cpu"

    def _generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        self.seen = [*getattr(self, "seen", []), len(prompts)]
        call = '{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}'
        return [
            '{"answer": "sunny"}' if "Tool results:" in p else f"Let me check. {call}"
            for p in prompts
        ]


async def test_parsed_tool_calls_run_and_the_answer_ends_the_run(tmp_path: Path) -> None:
    class Weather:
        async def call(self, tool: str, arguments: object, **kwargs: object) -> object:
            from brain import ToolResult
            from brain._proto.dispatch.v1 import dispatch_pb2 as pb

            assert (tool, arguments) == ("weather", {"city": "Oslo"})
            return ToolResult(pb.ToolResult(status=pb.STATUS_OK, result=b'{"sky": "clear"}'))

    planner = ScriptedLocal(tmp_path, options=LocalOptions(batcher=BatcherOptions(max_wait_ms=50)))
    await planner.start()
    metrics = BrainMetrics()

    async def fetch() -> list[ToolInfo]:
        return TOOLS

    catalog = ToolCatalog(fetch)
    await catalog.refresh()
    runs = RunManager(Agent(Weather(), planner, metrics), catalog, metrics)  # type: ignore[arg-type]
    submitted = [runs.submit(RunSpec(task="Weather in Oslo?")) for _ in range(6)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in submitted)), 30)
    await planner.aclose()
    assert [r.answer for r in submitted] == ["sunny"] * 6
    assert max(planner.seen[1:]) > 1  # the six runs' prompts were batched
