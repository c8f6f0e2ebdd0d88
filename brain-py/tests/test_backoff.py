"""The reconnect schedule shared by the client's stream and the tool-list refresher."""

from __future__ import annotations

from brain._backoff import Backoff


def test_delays_stay_under_a_doubling_ceiling_up_to_the_cap() -> None:
    backoff = Backoff(0.05, 5.0)
    for attempt in range(20):
        assert 0 <= backoff.next_delay() <= min(5.0, 0.05 * 2**attempt)
    assert backoff.attempt == 20


def test_a_long_outage_does_not_overflow_and_a_success_starts_short_again() -> None:
    backoff = Backoff(0.05, 5.0)
    for _ in range(5000):  # 0.05 * 2.0**1100 would not fit in a float
        assert backoff.next_delay() <= 5.0
    backoff.reset()
    assert backoff.next_delay() <= 0.05
