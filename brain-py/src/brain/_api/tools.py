"""``GET /v1/tools``: the tools runs may use (the planner's own are hidden)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from .._brain import Brain
from .deps import get_brain
from .models import ToolOut

router = APIRouter(prefix="/v1/tools", tags=["tools"])


@router.get("", response_model=list[ToolOut])
async def list_tools(brain: Annotated[Brain, Depends(get_brain)]) -> list[ToolOut]:
    return [ToolOut.of(t) for t in brain.catalog.tools]
