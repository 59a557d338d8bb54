"""The configuration read against the loaded plans, at start-up: what will not be
chargeable (or will not work at all) as configured, each as one line naming the key that
fixes it. Pure: config and plans in, findings out; ``ocs serve`` logs them as warnings.

The model is CGRateS's configsanity: a server that starts but refuses every session of a
protocol is worse than one that says why at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from ocs.config import Config
from ocs.rating.plans import Plan, Service


def _prices_data(plan: Plan, rating_group: int | None) -> bool:
    """A home data rate of ``plan`` applies to sessions rated under ``rating_group``."""
    if rating_group is not None and rating_group in plan.zero_rated_groups:
        return True
    for r in plan.rates:
        if r.service is not Service.DATA or r.zones:
            continue
        if r.rating_groups is None or (rating_group is not None
                                       and rating_group in r.rating_groups):
            return True
    return False


def _names(plans: list[Plan]) -> str:
    ids = sorted(p.id for p in plans)
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def findings(cfg: Config, plans: Mapping[str, Plan]) -> list[str]:
    out: list[str] = []
    if not plans:
        return ["no plans are loaded: every charge is refused; load some with "
                "'ocs plan load FILE'"]
    rad = cfg.radius
    if rad is not None:
        if not rad.clients:
            out.append("[radius] is on but has no [[radius.clients]]: every RADIUS packet is "
                       "dropped (unknown_client); add the NAS under [[radius.clients]]")
        rg = rad.rating_group if rad.rating_group >= 0 else None
        timed = [p for p in plans.values()
                 if any(r.service is Service.TIME for r in p.rates)]
        unpriced = [p for p in plans.values() if p not in timed and not _prices_data(p, rg)]
        if unpriced:
            groups = sorted({g for p in unpriced for r in p.rates
                             if r.service is Service.DATA and r.rating_groups
                             for g in r.rating_groups})
            fix = (f"set [radius] rating_group to a group their data rates price ({groups[0]}"
                   f"{', ...' if len(groups) > 1 else ''})" if groups else
                   "give those plans a data rate")
            where = ("rated with no rating group" if rg is None
                     else f"rated under rating group {rg}")
            out.append(f"RADIUS data sessions ({where}) of subscribers on plan(s) "
                       f"{_names(unpriced)} are not chargeable: every such session is refused "
                       f"(rating_failed) and disconnected; {fix}")
    smpp = cfg.smpp
    if smpp is not None:
        if not smpp.accounts:
            out.append("[smpp] is on but has no [[smpp.accounts]]: no ESME can bind; add one")
        elif not smpp.routes:
            out.append("[smpp] has no [[smpp.routes]]: every submit_sm is refused "
                       "(ESME_RINVDSTADR); add a route (prefix, system_id)")
        no_sms = [p for p in plans.values()
                  if not any(r.service is Service.SMS and not r.zones for r in p.rates)]
        if no_sms:
            out.append(f"SMS from subscribers on plan(s) {_names(no_sms)} are not chargeable "
                       "(no home sms rate): their submit_sm are refused; add an sms rate")
    return out
