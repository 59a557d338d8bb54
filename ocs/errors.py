"""Errors that cross layers: what a protocol may catch from charging, whatever runs it.

A leaf module (it imports nothing of ours): the store, the writer process and the charging
core raise these, and protocols map them to their own codes (Diameter 3004 / 5012, SMPP
ESME_RTHROTTLED / ESME_RSYSERR, no RADIUS answer). The writer process sends an error's
class name across; :data:`BY_NAME` turns it back into the same type.
"""

from __future__ import annotations


class ChargingError(RuntimeError):
    """Charging could not run the request now; nothing was charged."""


class ChargingBusy(ChargingError):
    """Too much queued: answer the peer with its protocol's busy code (it retries)."""


class ChargingUnavailable(ChargingError):
    """The store or its writer cannot take the request (stopping, gone, failing)."""


class ChargingPaused(ChargingUnavailable):
    """New charging is refused for now (e.g. no room for CDR files; an alarm is raised).
    Settling what was already used still goes through."""


BY_NAME: dict[str, type[ChargingError]] = {
    cls.__name__: cls
    for cls in (ChargingError, ChargingBusy, ChargingUnavailable, ChargingPaused)
}
"""Error types the writer process may send back by name (the store adds its own)."""


def register(cls: type[ChargingError]) -> type[ChargingError]:
    """Let ``cls`` cross the writer process boundary as itself."""
    BY_NAME[cls.__name__] = cls
    return cls
