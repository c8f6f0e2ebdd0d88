"""Demo tool service for tandem: calculator, unit conversion, weather, search and time.

A small aiohttp app with real (if modest) tools, so that demos and load tests of
the sidecar exercise genuine HTTP upstreams without any network access.
"""

from .app import COUNTERS, create_app

__all__ = ["COUNTERS", "create_app"]
