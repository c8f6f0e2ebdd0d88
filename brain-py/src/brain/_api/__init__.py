"""The brain's HTTP API (FastAPI): one router module per resource.

| module | routes |
|---|---|
| ``runs.py`` | ``POST /v1/runs``, ``GET /v1/runs/{id}``, ``GET /v1/runs/{id}/events`` |
| | (Server-Sent Events), ``POST /v1/runs/{id}/cancel`` |
| ``tools.py`` | ``GET /v1/tools`` |
| ``health.py`` | ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` |
| ``models.py`` | request and response models |
| ``app.py`` | ``create_app(brain)``: routers, error mapping, ``app.state.brain`` |
| ``deps.py`` | dependencies the routers share (the process's ``Brain``) |
| ``limits.py`` | ``HttpLimits``: what the server admits (connections, heads, bodies) |
| ``body.py`` | ``BoundedBody``: request bodies read within their size and time bounds |
| ``protocol.py`` | uvicorn's h11 with the connection caps and the request-head deadline |
| ``server.py`` | ``serve()``: the app on uvicorn, and the drain on SIGTERM (``brain serve``) |

``server`` is imported on its own (by ``brain serve`` and the tests): building an app
needs no uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
