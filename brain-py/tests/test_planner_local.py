"""The local planner: any causal LM directory (a tiny random GPT-2 built here), prompts,
the grammar policy per step, and replies.

A model with random weights can only babble; under the tool grammar its babble is still
a call to a real tool with schema-valid arguments, or an answer. The bundled model's
planning through the real sidecar is in tests/test_brain_local.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from brain import ToolInfo
from brain._agent import Agent
from brain._catalog import ToolCatalog
from brain._engine.engine import EngineOptions
from brain._exceptions import PlannerOutputError
from brain._metrics import BrainMetrics
from brain._planners.base import Observation, PlanningState, Step, ToolCallRequest, Turn
from brain._planners.local import LocalOptions, LocalPlanner, build_messages, parse_reply
from brain._runs.manager import RunManager
from brain._runs.record import RunSpec, RunState

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOOLS = [
    ToolInfo(
        "weather",
        "Current weather for a city.",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
        None,
        5000,
        (),
    )
]


def build_tiny_model(path: Path, n_positions: int = 512) -> Path:
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
        n_positions=n_positions,
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
        max_new_tokens=40, device="cpu", engine=EngineOptions(max_batch=8, cpu_threads=1)
    )
    local = LocalPlanner(model_dir, options=options)
    await local.start()
    yield local
    await local.aclose()


async def test_any_causal_lm_directory_loads(planner: LocalPlanner) -> None:
    assert planner.ready
    assert planner.device == "cpu"


async def test_random_weights_still_propose_only_schema_valid_calls(
    planner: LocalPlanner,
) -> None:
    """The grammar, not the model, makes every reply well-formed."""
    calls: list[tuple[str, object]] = []

    class Weather:
        async def call(self, tool: str, arguments: object, **kwargs: object) -> object:
            from brain import ToolResult
            from brain._proto.dispatch.v1 import dispatch_pb2 as pb

            calls.append((tool, arguments))
            return ToolResult(pb.ToolResult(status=pb.STATUS_OK, result=b'{"sky": "clear"}'))

    metrics = BrainMetrics()
    agent = Agent(Weather(), planner, metrics)  # type: ignore[arg-type]

    async def fetch() -> list[ToolInfo]:
        return TOOLS

    catalog = ToolCatalog(fetch)
    await catalog.refresh()
    runs = RunManager(agent, catalog, metrics)
    submitted = [runs.submit(RunSpec(task=f"Weather in city {i}?")) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in submitted)), 300)
    assert calls, "the first step must call a tool"
    for tool, arguments in calls:
        assert tool == "weather"
        assert isinstance(arguments, dict)
        assert set(arguments) == {"city"}
        assert 1 <= len(arguments["city"]) <= 20
    for run in submitted:
        # A babbling model may run out of tokens inside an answer string; never a crash.
        assert run.state in (RunState.SUCCEEDED, RunState.FAILED), run.state
        if run.state == RunState.FAILED:
            assert run.stop_reason == "planner_error"
            assert "cut off" in (run.error or "") or "tokens; at most" in (run.error or "")
    assert planner.engine.stats().max_batch_size > 1


def _state(history: tuple[Turn, ...] = ()) -> PlanningState:
    return PlanningState(run_id="r", task="Weather in Oslo?", tools=TOOLS, history=history)


def _turn(status: str) -> Turn:
    call = ToolCallRequest("c1", "weather", {"city": "Oslo"}, '{"city": "Oslo"}')
    content = '{"sky": "clear"}' if status == "ok" else '{"error": "unknown city"}'
    result = {"sky": "clear"} if status == "ok" else None
    return Turn(Step.calls(call), (Observation(call, status, content, result),))


async def test_the_grammar_asks_for_calls_first_and_an_answer_after_results(
    planner: LocalPlanner,
) -> None:
    first = planner.grammar(_state())
    assert "calls" in first.splitlines()[0]
    assert "answer" not in first.splitlines()[0]
    after_error = planner.grammar(_state((_turn("upstream_error"),)))
    assert after_error.splitlines()[0] == "start: calls | answer"
    after_ok = planner.grammar(_state((_turn("ok"),)))
    assert after_ok.splitlines()[0] == "start: answer"


async def test_messages_show_tools_examples_and_observations() -> None:
    messages = build_messages(_state((_turn("ok"), _turn("upstream_error"))))
    system = messages[0]["content"]
    assert "- weather(city: string): Current weather for a city." in system
    assert "Is it colder in Oslo or in Rome?" in system  # its tool is listed
    assert "12 * (3 + 4)" not in system  # calculator is not
    assert messages[1] == {"role": "user", "content": "Weather in Oslo?"}
    assert messages[2]["content"] == (
        '{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}'
    )
    assert 'weather({"city":"Oslo"}) -> sky=clear' in messages[3]["content"]
    assert "error (upstream_error): unknown city" in messages[5]["content"]


async def test_replies_parse() -> None:
    step = parse_reply(
        '{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}, '
        '{"name": "weather", "arguments": {"city": "Rome"}}]}'
    )
    assert [(c.name, c.arguments) for c in step.tool_calls] == [
        ("weather", {"city": "Oslo"}),
        ("weather", {"city": "Rome"}),
    ]
    assert parse_reply('{"answer": "21 degrees"}').final == "21 degrees"


async def test_a_cut_off_reply_is_a_planner_output_error() -> None:
    with pytest.raises(PlannerOutputError) as raised:
        parse_reply('{"answer": "it is')
    assert raised.value.output == '{"answer": "it is'
