"""Builds the planner a command line or config asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._agent import ToolCaller
from .._embedding import SentenceEmbedder
from .._metrics import BrainMetrics
from .base import Planner
from .local import LocalOptions, LocalPlanner
from .openai import OpenAIOptions, OpenAIPlanner
from .router import RouterPlanner

__all__ = ["PLANNERS", "ROUTER_ANSWERS", "PlannerConfig", "build_planner"]

PLANNERS = ("router", "openai", "local")
#: Who writes the router's answers: no model (sentences built from the results), or the
#: local causal LM (``model_dir``/``gguf``, else the bundled model).
ROUTER_ANSWERS = ("template", "local")


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannerConfig:
    kind: str = "router"
    #: ``local``: a transformers causal LM directory; else ``gguf``; else the bundled model.
    model_dir: Path | None = None
    #: ``local``: a GGUF file (converted once into the cache); default: the bundled model.
    gguf: Path | None = None
    #: ``router``: the sentence-embedding model; default: the bundled all-MiniLM-L6-v2.
    embedding_model_dir: Path | None = None
    #: "cuda", "cpu"; default: cuda when available.
    device: str | None = None
    #: ``local``: torch CPU threads; default: torch's (one per core).
    llm_threads: int | None = None
    #: ``router``: who writes the final answer, one of :data:`ROUTER_ANSWERS`.
    router_answers: str = "template"
    openai: OpenAIOptions = field(default_factory=OpenAIOptions)


def build_planner(config: PlannerConfig, client: ToolCaller, metrics: BrainMetrics) -> Planner:
    if config.kind == "router":
        if config.router_answers not in ROUTER_ANSWERS:
            raise ValueError(
                f"unknown router answers {config.router_answers!r}; "
                f"choose one of {', '.join(ROUTER_ANSWERS)}"
            )
        embedder = SentenceEmbedder(
            config.embedding_model_dir, device=config.device, metrics=metrics.batcher
        )
        writer = _local(config, metrics) if config.router_answers == "local" else None
        return RouterPlanner(embedder, answer_model=writer)
    if config.kind == "openai":
        return OpenAIPlanner(client, options=config.openai)
    if config.kind == "local":
        return _local(config, metrics)
    raise ValueError(f"unknown planner {config.kind!r}; choose one of {', '.join(PLANNERS)}")


def _local(config: PlannerConfig, metrics: BrainMetrics) -> LocalPlanner:
    from .._engine.engine import EngineOptions

    return LocalPlanner(
        config.model_dir,
        gguf=config.gguf,
        options=LocalOptions(
            device=config.device, engine=EngineOptions(cpu_threads=config.llm_threads)
        ),
        metrics=metrics.llm,
    )
