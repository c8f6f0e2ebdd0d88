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

__all__ = ["PLANNERS", "PlannerConfig", "build_planner"]

PLANNERS = ("router", "openai", "local")


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
    openai: OpenAIOptions = field(default_factory=OpenAIOptions)


def build_planner(config: PlannerConfig, client: ToolCaller, metrics: BrainMetrics) -> Planner:
    if config.kind == "router":
        embedder = SentenceEmbedder(
            config.embedding_model_dir, device=config.device, metrics=metrics.batcher
        )
        return RouterPlanner(embedder)
    if config.kind == "openai":
        return OpenAIPlanner(client, options=config.openai)
    if config.kind == "local":
        from .._engine.engine import EngineOptions

        return LocalPlanner(
            config.model_dir,
            gguf=config.gguf,
            options=LocalOptions(
                device=config.device, engine=EngineOptions(cpu_threads=config.llm_threads)
            ),
            metrics=metrics.llm,
        )
    raise ValueError(f"unknown planner {config.kind!r}; choose one of {', '.join(PLANNERS)}")
