"""``ocs-sim``: load and scenario simulator. Subcommands are registered per protocol."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from sim.catalog import load_all
from sim.registry import COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    load_all()
    parser = argparse.ArgumentParser(prog="ocs-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in sorted(COMMANDS.values(), key=lambda c: c.name):
        p = sub.add_parser(cmd.name, help=cmd.help)
        cmd.configure(p)
        p.set_defaults(run=cmd.run)
    args = parser.parse_args(argv)
    # A load generator must not add its own collector pauses to the latencies it
    # measures: what exists now is frozen, and young collections come rarely (runs are
    # bounded; asyncio's garbage is almost all freed by reference counting).
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"ocs-sim: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
