"""What the hostile-upstream tests share: a case (a scenario and the result it must get)
and the tools that call each scenario, on HTTP/1.1 (:mod:`hostile.upstream`) and HTTP/2
(:mod:`hostile.h2_origin`) alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brain import Status

from harness import tool

MB = 1024 * 1024
#: Resident memory a case may add: far below the 50 MB bodies and the 100 MB bomb.
RSS_BOUND = 48 * MB
ATTEMPTS = 2
RETRY = {"max_attempts": ATTEMPTS, "backoff_initial": "10ms", "backoff_max": "20ms"}
#: The one scenario whose tool has a short deadline: it is what ends the call.
DRIP_TIMEOUT = "1s"


@dataclass(frozen=True)
class Case:
    scenario: str
    status: Status
    upstream_status: int = 0
    #: A fragment of the error message.
    error: str = ""
    attempts: int = 1
    #: Whether the origin ends the whole connection (HTTP/2: the calls beside it on that
    #: connection may fail too).
    connection_level: bool = False


def case_tools(base_url: str, cases: list[Case]) -> list[dict[str, Any]]:
    """A tool per case, named for its scenario, at ``base_url/<scenario>``: retried up to
    ``ATTEMPTS`` times, responses capped at 1 MB, ``drip`` given a 1 s deadline."""
    return [
        tool(
            c.scenario,
            f"{base_url}/{c.scenario}",
            retry=RETRY,
            timeout=DRIP_TIMEOUT if c.scenario == "drip" else "10s",
            max_response_bytes=MB,
        )
        for c in cases
    ]
