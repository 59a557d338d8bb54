"""Simulator subcommands and benchmark parts, registered per protocol.

Each protocol issue adds its ``ocs-sim <protocol>`` subcommand and its ``make bench``
part here; the CLI and the bench harness pick them up.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.bench import BenchContext
    from sim.report import Report


@dataclass(frozen=True, slots=True)
class SimCommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class BenchPart:
    name: str
    run: Callable[[BenchContext], Awaitable[list[Report]]]


COMMANDS: dict[str, SimCommand] = {}
BENCH_PARTS: dict[str, BenchPart] = {}


def command(name: str, help: str) -> Callable[[Any], Any]:
    def deco(cls: Any) -> Any:
        COMMANDS[name] = SimCommand(name, help, cls.configure, cls.run)
        return cls

    return deco


def bench_part(name: str) -> Callable[[Callable[[BenchContext], Awaitable[list[Report]]]],
                                      Callable[[BenchContext], Awaitable[list[Report]]]]:
    def deco(fn: Callable[[BenchContext], Awaitable[list[Report]]]) -> Callable[
            [BenchContext], Awaitable[list[Report]]]:
        BENCH_PARTS[name] = BenchPart(name, fn)
        return fn

    return deco


def load_all() -> None:
    """Import every module that registers commands or bench parts."""
    import sim.billing_cmd
    import sim.core_cmd
    import sim.diameter_cmd
    import sim.fuzz_cmd
    import sim.radius_cmd
    import sim.scaling
    import sim.scenario
    import sim.smpp_cmd
    import sim.snmp_cmd  # noqa: F401
