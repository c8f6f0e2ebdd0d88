"""``create_app(brain)``: the FastAPI application around one :class:`~brain.Brain`.

Errors are mapped here, in one place: :class:`~brain.RunNotFound` → 404,
:class:`~brain.AdmissionRefused` → 429 (over the in-flight limit) or 503
(draining), each with ``Retry-After``; request validation → 422 listing each problem with
its field path (``loc``). Request bodies are bounded before any of this
(:class:`~.body.BoundedBody`: 413, 408).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .._brain import Brain
from .._exceptions import AdmissionRefused, RunNotFound
from . import health, runs, tools
from .body import BoundedBody
from .limits import HttpLimits

__all__ = ["create_app"]


def create_app(brain: Brain, limits: HttpLimits | None = None) -> FastAPI:
    app = FastAPI(
        title="tandem brain",
        summary="Agent runs: plan with an LLM, act through the sidecar.",
        version="0.1.0",
    )
    app.state.brain = brain
    app.include_router(runs.router)
    app.include_router(tools.router)
    app.include_router(health.router)
    app.add_middleware(
        BoundedBody, limits=limits or HttpLimits(), refused=brain.metrics.http.refused
    )

    @app.exception_handler(RunNotFound)
    async def not_found(_: Request, exc: RunNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(AdmissionRefused)
    async def refused(_: Request, exc: AdmissionRefused) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=503 if exc.draining else 429,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    return app
