"""``Backoff``: the wait between reconnect attempts, exponential with full jitter.

Used by everything that keeps trying a connection for as long as the process lives: the
client's Dispatch stream (``_client.py``) and the tool-list refresher (``_brain.py``).
Attempt ``n`` waits a uniformly random time between 0 and ``min(cap, initial * 2**n)``
("full jitter": reconnecting brains spread out instead of arriving at the sidecar
together). A success calls :meth:`Backoff.reset`, so the next outage starts short again.

Not tenacity or backoff: both retry one call until it succeeds, while these loops run a
stream (or a refresh) for hours, reset the schedule on every success, and do their own
work between attempts (failing the broken stream's calls, logging the wait). The
schedule is the part they share, and it is these few lines.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for successive attempts: ``uniform(0, min(cap, initial * 2**attempt))``."""

    def __init__(self, initial: float, cap: float) -> None:
        if initial < 0 or cap < 0:
            raise ValueError("backoff delays must not be negative")
        self.initial = initial
        self.cap = cap
        #: Failed attempts since the last success.
        self.attempt = 0

    def next_delay(self) -> float:
        """The wait before the next attempt (and count this failure)."""
        # Stop doubling once past the cap: 2**attempt would overflow a float after an
        # outage of a thousand attempts.
        ceiling = min(self.cap, self.initial * 2.0 ** min(self.attempt, 64))
        self.attempt += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        """The attempt succeeded: the next failure waits ``initial`` at most again."""
        self.attempt = 0
