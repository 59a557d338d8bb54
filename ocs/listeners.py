"""Protocol listeners the server can start, by config section.

Each protocol package registers a starter here when it lands; ``ocs serve`` starts a
listener only for sections present and enabled in the config.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ocs.server import Server

Starter = Callable[["Server"], Awaitable[Any]]
"""Starts a listener for the server; returns an object with ``async close()``."""

STARTERS: dict[str, Starter] = {}


def register(section: str, starter: Starter) -> None:
    STARTERS[section] = starter


def load_builtin() -> None:
    """Register the listeners of the protocol packages in this build."""
    from protocols.diameter.transport import start_diameter
    from protocols.radius.transport import start_radius
    from protocols.smpp.transport import start_smpp
    from protocols.snmp.transport import start_snmp

    register("diameter", start_diameter)
    register("radius", start_radius)
    register("smpp", start_smpp)
    register("snmp", start_snmp)
