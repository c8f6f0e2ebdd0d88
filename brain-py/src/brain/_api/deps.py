"""Dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request

from .._brain import Brain

__all__ = ["get_brain"]


def get_brain(request: Request) -> Brain:
    """The process's :class:`~brain.Brain`, kept on ``app.state``."""
    brain: Brain = request.app.state.brain
    return brain
