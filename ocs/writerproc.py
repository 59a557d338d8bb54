"""The writer process's program: every write operation of the node over the store — the
charging engine's and the NOC's alarms.

``python -m ocs.writerproc FD JSON`` is what :class:`ocs.store.procwriter.ProcessWriter`
starts for ``ocs serve``; :func:`process_writer` builds that writer.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from ocs import provisioning
from ocs.charging.engine import (
    OPERATIONS,
    ChargingEngine,
    EngineSettings,
    settings_data,
    settings_from_data,
)
from ocs.nms.history import NmsSample
from ocs.nms.history import record as nms_record
from ocs.noc import service as noc
from ocs.noc.alarms import Limits
from ocs.store.env import Store
from ocs.store.procwriter import BatchHook, OpTable, ProcessWriter, ResultHook, child_main

PROGRAM = "ocs.writerproc"
NO_LIMITS = Limits()


def operations(store: Store, conf: dict[str, Any]) -> OpTable:
    """The write operations by name, for the writer process."""
    engine = ChargingEngine(store, None, settings_from_data(conf["engine"]))
    engine.plans.start_warming(store)
    table: OpTable = {name: (req_t, res_t, getattr(engine, "op_" + name))
                      for name, (req_t, res_t) in OPERATIONS.items()}
    table.update(noc.AlarmOps(Limits(**conf["alarms"])).table())
    table["nms_record"] = (NmsSample, bool, nms_record)
    table.update(provisioning.OPERATIONS)
    return table


def process_writer(settings: EngineSettings, *, alarm_limits: Limits = NO_LIMITS,
                   data_dir: str, map_size_mb: int, max_ops: int, max_delay_ms: float,
                   queue_size: int, log_format: str = "json",
                   on_batch: BatchHook | None = None, listen: str = "",
                   attach: str = "", on_result: ResultHook | None = None) -> ProcessWriter:
    """A :class:`ProcessWriter` running the engine's operations with ``settings`` and
    the alarm operations with ``alarm_limits``."""
    eng = settings_data(settings)
    results = {name: res_t for name, (_q, res_t) in OPERATIONS.items()}
    results.update({name: res_t for name, (_q, res_t) in noc.OPERATIONS.items()})
    results["nms_record"] = bool
    results.update({name: res_t for name, (_q, res_t, _f) in provisioning.OPERATIONS.items()})
    return ProcessWriter(program=PROGRAM, results=results,
                         program_settings={"engine": eng,
                                           "alarms": msgspec.structs.asdict(alarm_limits)},
                         data_dir=data_dir, map_size_mb=map_size_mb, max_ops=max_ops,
                         max_delay_ms=max_delay_ms, queue_size=queue_size,
                         log_format=log_format, on_batch=on_batch, listen=listen,
                         attach=attach, on_result=on_result)


if __name__ == "__main__":
    child_main(int(sys.argv[1]), sys.argv[2], operations)
