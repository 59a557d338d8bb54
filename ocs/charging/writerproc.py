"""The writer process's program: the charging engine's operations over the store.

``python -m ocs.charging.writerproc FD JSON`` is what :class:`ocs.store.procwriter.
ProcessWriter` starts for ``ocs serve``; :func:`process_writer` builds that writer.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from ocs.charging.engine import OPERATIONS, ChargingEngine, EngineSettings
from ocs.store.env import Store
from ocs.store.procwriter import BatchHook, OpTable, ProcessWriter, child_main

PROGRAM = "ocs.charging.writerproc"


def operations(store: Store, conf: dict[str, Any]) -> OpTable:
    """The engine's write operations, by name, for the writer process."""
    settings = EngineSettings(**{**conf, "home_networks": frozenset(conf["home_networks"])})
    engine = ChargingEngine(store, None, settings)
    return {name: (req_t, res_t, getattr(engine, "op_" + name))
            for name, (req_t, res_t) in OPERATIONS.items()}


def process_writer(settings: EngineSettings, *, data_dir: str, map_size_mb: int,
                   max_ops: int, max_delay_ms: float, queue_size: int,
                   log_format: str = "json", on_batch: BatchHook | None = None,
                   listen: str = "", attach: str = "") -> ProcessWriter:
    """A :class:`ProcessWriter` running the engine's operations with ``settings``."""
    conf = dataclasses.asdict(settings)
    conf["home_networks"] = sorted(settings.home_networks)
    return ProcessWriter(program=PROGRAM, program_settings=conf,
                         results={name: res_t for name, (_q, res_t) in OPERATIONS.items()},
                         data_dir=data_dir, map_size_mb=map_size_mb, max_ops=max_ops,
                         max_delay_ms=max_delay_ms, queue_size=queue_size,
                         log_format=log_format, on_batch=on_batch, listen=listen,
                         attach=attach)


if __name__ == "__main__":
    child_main(int(sys.argv[1]), sys.argv[2], operations)
