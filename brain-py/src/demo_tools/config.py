"""``local_tools_yaml``: a tools.yaml made to call upstreams on this machine.

``make run``, the load test and the cross-language tests start the demo tool service (and
test upstreams) on loopback ports; this is the one place where their tools.yaml files are
adapted to that.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["LOOPBACK_CIDRS", "local_tools_yaml"]

#: Upstreams on this machine that demo and test tools call.
LOOPBACK_CIDRS = ["127.0.0.0/8"]


def local_tools_yaml(config: str | dict[str, Any], *, replace: dict[str, str] | None = None) -> str:
    """A tools.yaml whose tools may call upstreams on this machine (demos and tests).

    Each tool gets ``egress.allow`` for the loopback range (the sidecar refuses private and
    loopback addresses otherwise), and every ``replace`` key in the text (e.g. the demo
    service's default base URL) becomes its value.
    """
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    parsed = yaml.safe_load(text)
    for tool in parsed.get("tools", []):
        tool.setdefault("egress", {"allow": list(LOOPBACK_CIDRS)})
    return yaml.safe_dump(parsed, sort_keys=False, allow_unicode=True)
