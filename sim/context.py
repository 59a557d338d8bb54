"""What a ``make bench`` part gets: the running bench server, its work directory, the
scale of the run; and the helpers the parts share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocs.server import Server


def with_addresses(config: str, bound: dict[tuple[str, str], str]) -> str:
    """``config`` with the ``(section, key)`` listen addresses replaced by ``bound`` (the
    ports the bench server actually got for its ``127.0.0.1:0``), for tools that read the
    server's endpoints from a config file."""
    out, section = [], ""
    for line in config.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]")
        key = stripped.split("=", 1)[0].strip()
        if (section, key) in bound:
            line = f'{key} = "{bound[section, key]}"'
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class BenchContext:
    workdir: Path
    server: Server
    quick: float = 1.0

    def scale(self, n: int) -> int:
        return max(1, int(n * self.quick))

    def scale_s(self, s: float) -> float:
        return max(0.5, s * self.quick)
