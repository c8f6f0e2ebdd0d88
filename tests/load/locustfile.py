"""Locust load for tandem: the brain's HTTP API and the sidecar's gRPC ``Invoke``.

Run through ``make load`` (which starts the stack: ``tests/load/run_load.py``) or by hand::

    locust -f tests/load/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --host http://127.0.0.1:8080 [--sidecar-target 127.0.0.1:50051 --sidecar-token ...]

* :class:`BrainRunUser` (``FastHttpUser``): ``POST /v1/runs?wait=true``, and the async path
  (``POST /v1/runs`` → 202, then ``GET /v1/runs/{id}`` until the run ends). ``--host`` is
  the brain API: a local ``brain serve`` or a deployed cluster's Service.
* :class:`SidecarInvokeUser`: unary ``Invoke`` on the sidecar (gevent-compatible grpcio),
  each call reported through locust's ``request`` event. Needs ``--sidecar-target``.

A 429/503 with ``Retry-After`` is the brain shedding load as designed and is not counted as
a failure; anything else unexpected is (and makes locust exit non-zero).
"""

from __future__ import annotations

# gRPC must be told about gevent before any channel exists.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
from locust import FastHttpUser, User, between, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from brain._proto.dispatch.v1 import dispatch_pb2 as pb  # noqa: E402
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc  # noqa: E402

#: Tasks the router planner answers with the demo tools (one or two tool calls each).
TASKS = (
    "What is 2 ** 10 + sqrt(144)?",
    "Calculate (17.5 * 4) / 3.",
    "How many miles is a 42.195 km marathon?",
    "Convert 100 Celsius to Fahrenheit.",
    "What's the weather in Tokyo right now?",
    "Search for how rate limiting with token buckets works.",
)
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
#: Statuses the brain answers when it sheds load on purpose (with Retry-After).
SHED = {429, 503}
RUN_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.2

#: Invoke calls: tool and arguments.
CALLS = (
    ("calculator", {"expression": "2 * (3 + 4.5)"}),
    ("convert_units", {"value": 42.195, "from": "km", "to": "mi"}),
)


def _why(response: Any) -> str:
    """A failed response in a few words (a connection error has no status or body)."""
    if response.error is not None and not response.status_code:
        return f"no response: {response.error}"
    return f"status {response.status_code}: {(response.text or '')[:200]}"


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--sidecar-target", default="", help="sidecar gRPC host:port")
    parser.add_argument("--sidecar-token", default="", help="the sidecar's bearer token")


class BrainRunUser(FastHttpUser):
    """An API client submitting agent runs."""

    wait_time = between(0.5, 1.5)
    connection_timeout = 10.0
    network_timeout = RUN_DEADLINE_S + 10

    def _body(self) -> dict[str, Any]:
        return {"task": random.choice(TASKS), "deadline_s": RUN_DEADLINE_S}

    @task(2)
    def run_and_wait(self) -> None:
        with self.client.post(
            "/v1/runs?wait=true",
            json=self._body(),
            name="POST /v1/runs?wait=true",
            catch_response=True,
        ) as response:
            if response.status_code in SHED:
                response.success()
            elif response.status_code != 200:
                response.failure(_why(response))
            else:
                state = response.json().get("state")
                if state != "succeeded":
                    response.failure(f"run ended {state}: {(response.text or '')[:300]}")

    @task(1)
    def submit_and_poll(self) -> None:
        with self.client.post(
            "/v1/runs", json=self._body(), name="POST /v1/runs", catch_response=True
        ) as response:
            if response.status_code in SHED:
                response.success()
                return
            if response.status_code != 202:
                response.failure(_why(response))
                return
            run_id = response.json()["id"]
        deadline = time.monotonic() + RUN_DEADLINE_S + 5
        while time.monotonic() < deadline:
            with self.client.get(
                f"/v1/runs/{run_id}", name="GET /v1/runs/{id}", catch_response=True
            ) as poll:
                if poll.status_code != 200:
                    poll.failure(_why(poll))
                    return
                state = poll.json().get("state")
                if state in TERMINAL:
                    if state != "succeeded":
                        poll.failure(f"run ended {state}")
                    return
            time.sleep(POLL_INTERVAL_S)
        events.request.fire(
            request_type="RUN",
            name="run finished (async)",
            response_time=(RUN_DEADLINE_S + 5) * 1000,
            response_length=0,
            exception=TimeoutError(f"run {run_id} not finished in time"),
            context={},
        )


class SidecarInvokeUser(User):
    """A client of the sidecar's unary ``Invoke`` (what a brain without streams would do)."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        target = getattr(options, "sidecar_target", "") if options else ""
        if not target:
            raise StopUser  # no sidecar to reach (e.g. a cluster's brain API only)
        token = getattr(options, "sidecar_token", "")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.default_authority", "localhost")]
        )
        self._stub = pb_grpc.DispatcherStub(self._channel)
        self._ids = 0

    def on_stop(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()

    @task
    def invoke(self) -> None:
        tool, arguments = random.choice(CALLS)
        self._ids += 1
        call = pb.ToolCall(
            call_id=f"{id(self)}-{self._ids}",
            agent_id=f"locust-{id(self)}",
            tool=tool,
            arguments=json.dumps(arguments).encode(),
            timeout_ms=5000,
        )
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            result = self._stub.Invoke(call, timeout=10, metadata=self._metadata)
            length = len(result.result)
            if result.status != pb.STATUS_OK:
                exception = RuntimeError(f"{pb.Status.Name(result.status)}: {result.error[:200]}")
        except grpc.RpcError as exc:
            exception = exc
        events.request.fire(
            request_type="grpc",
            name=f"Invoke {tool}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )
