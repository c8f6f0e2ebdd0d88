"""The demo: a tool service for tandem, and the client that drives the brain with it.

* the tool service (``python -m demo_tools``): calculator, unit conversion, weather,
  search and time; a small aiohttp app with real (if modest) tools, so that demos and
  load tests of the sidecar exercise genuine HTTP upstreams without any network access;
* ``client.py`` (``python -m demo_tools.client``): submits the demo tasks to a running
  ``brain serve`` and reports what happened (``make run``'s last step);
* ``config.py``: ``local_tools_yaml``, a tools.yaml adapted to upstreams on loopback.

Its packages (aiohttp, PyYAML) are the ``demo`` extra of ``tandem-brain``; the brain
itself imports nothing from here.
"""

from .app import COUNTERS, create_app

__all__ = ["COUNTERS", "create_app"]
