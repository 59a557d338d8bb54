"""Simulator subcommands and benchmark parts, registered per protocol.

Each protocol adds its ``ocs-sim <protocol>`` subcommand and its ``make bench`` part with
these decorators, in a module :mod:`sim.catalog` lists; the CLI and the bench harness
load that catalog.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.context import BenchContext
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
