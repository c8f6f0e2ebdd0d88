"""``/healthz`` (the process is up), ``/readyz`` (it can take runs), ``/metrics``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .._brain import Brain
from .deps import get_brain

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(brain: Annotated[Brain, Depends(get_brain)]) -> Response:
    """200 when the sidecar is reachable, the tools are loaded and the model is ready.

    503 while starting and while draining (so the Service stops sending new runs).
    """
    checks: dict[str, Any] = brain.readiness()
    ready = brain.ready and not brain.runs.draining
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(brain: Annotated[Brain, Depends(get_brain)]) -> Response:
    return Response(brain.metrics.render(), media_type=CONTENT_TYPE_LATEST)
