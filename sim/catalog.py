"""Every module that registers ``ocs-sim`` commands or ``make bench`` parts."""

from __future__ import annotations

import sim.api_cmd
import sim.billing_cmd
import sim.cluster_cmd
import sim.core_cmd
import sim.diameter_cmd
import sim.fuzz_cmd
import sim.nchf_cmd
import sim.nms_cmd
import sim.radius_cmd
import sim.rating_cmd
import sim.scaling
import sim.scenario
import sim.smpp_cmd
import sim.snmp_cmd

MODULES = (sim.api_cmd, sim.billing_cmd, sim.cluster_cmd, sim.core_cmd, sim.diameter_cmd,
           sim.fuzz_cmd, sim.nchf_cmd, sim.nms_cmd, sim.radius_cmd, sim.rating_cmd,
           sim.scaling, sim.scenario, sim.smpp_cmd, sim.snmp_cmd)


def load_all() -> None:
    """Every command and bench part is registered (importing this module did it)."""
