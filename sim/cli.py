"""``ocs-sim``: load and scenario simulator. Subcommands are registered per protocol."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sim.registry import COMMANDS, load_all


def main(argv: Sequence[str] | None = None) -> int:
    load_all()
    parser = argparse.ArgumentParser(prog="ocs-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in sorted(COMMANDS.values(), key=lambda c: c.name):
        p = sub.add_parser(cmd.name, help=cmd.help)
        cmd.configure(p)
        p.set_defaults(run=cmd.run)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"ocs-sim: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
