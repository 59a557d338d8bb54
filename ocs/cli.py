"""The ``ocs`` command: thin argument parsing around the core.

Bad input prints one line on stderr and exits with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ocs import build_version, views
from ocs.billing.run import BillingError
from ocs.cdr.export import CdrExporter
from ocs.cdr.reader import CdrFormatError
from ocs.charging.engine import ChargingEngine
from ocs.charging.model import DebitRequest, IdKind
from ocs.config import LOG_LEVELS, Config, ConfigError, load_config
from ocs.money import MoneyError, format_amount
from ocs.provisioning import (
    NewSubscriber,
    ProvisioningError,
    all_plans,
    import_subscribers,
    import_subscribers_each,
    op_add_subscriber,
    op_change_plan,
    op_load_plans,
    op_set_status,
    stored_zone_ids,
    stored_zones,
    validate_msisdn,
)
from ocs.rating.plans import PlanError, Service, compile_plan, load_plans_file
from ocs.store import Store, StoreError
from ocs.store.tx import StorePort

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _common() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="config file (default: $OCS_CONFIG, else ./config/ocs.toml, else "
                   "/etc/ocs/ocs.toml)")
    p.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="data directory (overrides node.data_dir)")
    return p


def build_parser() -> _Parser:
    common = _common()
    parser = _Parser(prog="ocs", description="Online charging system and AAA server",
                     parents=[common], epilog="exit status: 0 done, 1 refused / not found / "
                     "failed, 2 usage or config error")
    parser.add_argument("--version", action="version", version=f"ocs {build_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("serve", parents=[common], help="run the server")
    p.add_argument("--workers", type=int, metavar="N", default=None,
                   help="event-loop processes sharing the ports (default: node.workers; "
                   "0 = one per CPU core)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help="overrides node.log_level")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", parents=[common], help="create the store and load plans")
    p.add_argument("--demo", action="store_true", help="add the demo subscribers")
    p.add_argument("--plans", metavar="FILE", help="plans file (default: plans.toml beside "
                   "the config)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)

    plan = sub.add_parser("plan", parents=[common], help="tariff plans")
    psub = plan.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = psub.add_parser("load", parents=[common], help="load plans and zones from a TOML file")
    p.add_argument("file")
    p.add_argument("--effective", metavar="TIME",
                   help="when the plans' new versions take effect (ISO 8601 with a zone); "
                   "default: a changed plan now, a new plan from the start")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_load)
    p = psub.add_parser("import-rates", parents=[common],
                        help="a rate deck (CSV) as the plan's rates for one service")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--plan", required=True, metavar="ID")
    p.add_argument("--service", required=True, choices=["voice", "sms", "data"])
    p.add_argument("--effective", metavar="TIME",
                   help="when the new version takes effect (ISO 8601 with a zone); "
                   "default now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_import_rates)
    p = psub.add_parser("export", parents=[common],
                        help="a plan as a plans file (TOML) that 'ocs plan load' takes back, "
                        "or one service's rate deck as CSV")
    p.add_argument("id")
    p.add_argument("--version", type=int, help="this version (default: the latest loaded)")
    p.add_argument("--deck", choices=["voice", "sms", "data"],
                   help="only the service's imported deck, as CSV for import-rates")
    p.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    p.set_defaults(func=cmd_plan_export)
    p = psub.add_parser("history", parents=[common], help="a plan's versions")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_history)
    p = psub.add_parser("list", parents=[common])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_list)
    p = psub.add_parser("show", parents=[common])
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_show)

    s = sub.add_parser("subscriber", parents=[common], help="subscribers")
    ssub = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = ssub.add_parser("add", parents=[common])
    p.add_argument("--msisdn", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--imsi", default="")
    p.add_argument("--username", default="")
    p.add_argument("--password", default="")
    p.add_argument("--balance", default="")
    p.add_argument("--postpaid", action="store_true")
    p.add_argument("--credit-limit", default="")
    p.add_argument("--roaming", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--name", default="", help="the customer's name, for invoices")
    p.add_argument("--address", default="", help="billing address (lines separated by "
                   "newlines), for invoices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_add)
    p = ssub.add_parser("show", parents=[common])
    p.add_argument("msisdn")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_show)
    p = ssub.add_parser("list", parents=[common])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_list)
    p = ssub.add_parser("topup", parents=[common])
    p.add_argument("msisdn")
    p.add_argument("amount")
    p.add_argument("--reference", default="", metavar="REF",
                   help="the payment's id: the same reference again credits nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_topup)
    p = ssub.add_parser("history", parents=[common],
                        help="top-ups, charges, refunds and adjustments in time order")
    p.add_argument("msisdn")
    p.add_argument("--from", dest="since", metavar="TIME", help="ISO 8601 with a zone")
    p.add_argument("--to", dest="until", metavar="TIME", help="ISO 8601 with a zone")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_history)
    for action in ("suspend", "resume", "block", "delete"):
        p = ssub.add_parser(action, parents=[common])
        p.add_argument("msisdn")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_sub_status, status_action=action)
    p = ssub.add_parser("set", parents=[common],
                        help="change identities and terms: SIM swap, password, plan...")
    p.add_argument("msisdn")
    p.add_argument("--imsi", help="a new SIM's IMSI (\"\" removes it)")
    p.add_argument("--username", help="RADIUS user name (\"\" removes it)")
    p.add_argument("--password", help="RADIUS password (\"\" removes it)")
    p.add_argument("--plan", metavar="ID", help="another plan of the same mode and currency")
    p.add_argument("--credit-limit", metavar="AMOUNT", help="postpaid only")
    p.add_argument("--roaming", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--name", help="the customer's name, for invoices")
    p.add_argument("--address", help="billing address (lines separated by newlines)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_set)
    p = ssub.add_parser("plan", parents=[common], help="move a subscriber to another plan")
    p.add_argument("msisdn")
    p.add_argument("plan")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_plan)
    p = ssub.add_parser("import", parents=[common], help="bulk provisioning from CSV")
    p.add_argument("file")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sub_import)

    st = sub.add_parser("store", parents=[common],
                        help="the store: hot backup, verify, migrate to a Redis Cluster")
    stsub = st.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = stsub.add_parser("backup", parents=[common],
                         help="a consistent, compacted copy of the store, also while serving")
    p.add_argument("dir", help="a new or empty directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_backup)
    p = stsub.add_parser("migrate", parents=[common],
                         help="copy this node's LMDB store into the Redis Cluster of another "
                         "config (server stopped)")
    p.add_argument("--to-config", required=True, metavar="PATH",
                   help="a config with [store] backend = \"redis\"")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_migrate)
    p = stsub.add_parser("verify", parents=[common],
                         help="the store's records against each other (and the CDR files)")
    p.add_argument("--with-cdrs", action="store_true",
                   help="also per subscriber: all CDR charges (files and journal) against "
                   "the money the engine moved (needs every CDR file since the start)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_verify)

    nm = sub.add_parser("nms", parents=[common], help="network elements polled over SNMP")
    nmsub = nm.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = nmsub.add_parser("elements", parents=[common], help="the configured elements")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nms_elements)
    p = nmsub.add_parser("poll", parents=[common],
                         help="poll an element now (twice, for rates): figures and health")
    p.add_argument("id")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between the two polls (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nms_poll)
    p = nmsub.add_parser("health", parents=[common],
                         help="an element's health score from its last poll, explained")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nms_health)
    p = nmsub.add_parser("forecast", parents=[common],
                         help="capacity forecast per interface from the stored history")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nms_forecast)

    c = sub.add_parser("cdr", parents=[common], help="CDR files")
    csub = c.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = csub.add_parser("flush", parents=[common], help="close the open CDR file now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cdr_flush)
    p = csub.add_parser("list", parents=[common], help="list closed CDR files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cdr_list)
    p = csub.add_parser("export", parents=[common],
                        help="a period's CDRs (closed files) as one typed Parquet file")
    p.add_argument("--period", required=True, metavar="YYYY-MM")
    p.add_argument("--format", choices=["parquet"], default="parquet")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cdr_export)
    p = csub.add_parser("explain", parents=[common],
                        help="how a CDR's charge came about, rated again to check it")
    p.add_argument("record_id", metavar="RECORD_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cdr_explain)

    r = sub.add_parser("rate", parents=[common], help="rating, explained")
    rsub = r.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = rsub.add_parser("explain", parents=[common],
                        help="rate an event the way live charging would, and say why")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--msisdn", help="a subscriber: their plan, status and allowance")
    who.add_argument("--imsi")
    who.add_argument("--plan", help="a plan alone (no allowance)")
    p.add_argument("--service", choices=[s.value for s in Service], required=True)
    p.add_argument("--units", type=int, default=1,
                   help="bytes (data), seconds (voice, time) or messages (sms, mms)")
    p.add_argument("--destination", default="", help="called number (E.164 digits)")
    p.add_argument("--at", metavar="TIME",
                   help="event time, ISO 8601 with a zone (2026-11-26T18:30Z); default now")
    p.add_argument("--visited-network", default="", metavar="MCCMNC")
    p.add_argument("--rating-group", type=int)
    p.add_argument("--slice", default="", help="5G S-NSSAI: SST or SST-SD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rate_explain)

    a = sub.add_parser("alarms", parents=[common], help="NOC alarms")
    asub = a.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = asub.add_parser("list", parents=[common])
    p.add_argument("--active", action="store_true", help="only alarms not cleared")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alarms_list)
    for action in ("ack", "clear"):
        p = asub.add_parser(action, parents=[common])
        p.add_argument("id", type=int)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_alarms_action, alarm_action=action)

    fr = sub.add_parser("fraud", parents=[common], help="fraud cases and the offline scan")
    fsub = fr.add_subparsers(dest="action", required=True, parser_class=_Parser)
    fc = fsub.add_parser("cases", parents=[common], help="cases opened by the real-time rules")
    fcsub = fc.add_subparsers(dest="case_action", required=True, parser_class=_Parser)
    p = fcsub.add_parser("list", parents=[common])
    p.add_argument("--open", action="store_true", help="only open cases")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fraud_cases_list)
    p = fcsub.add_parser("show", parents=[common])
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fraud_cases_show)
    p = fcsub.add_parser("resolve", parents=[common])
    p.add_argument("id", type=int)
    p.add_argument("--reinstate", action="store_true",
                   help="make the subscriber active again if the case suspended it")
    p.add_argument("--note", default="", help="resolution (kept in the case)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fraud_cases_resolve)
    p = fsub.add_parser("scan", parents=[common],
                        help="rank subscribers by anomalous usage in a period's CDR files")
    p.add_argument("--period", required=True, metavar="YYYY-MM")
    p.add_argument("--out", metavar="CSV", help="default: DATA_DIR/fraud/scan_<period>.csv")
    p.add_argument("--model", metavar="PATH", help="score with a saved model instead of "
                   "fitting one on this period")
    p.add_argument("--save-model", metavar="PATH")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--top", type=int, default=20, help="rows in the terminal table")
    p.add_argument("--json", action="store_true", help="print the top rows as JSON")
    p.set_defaults(func=cmd_fraud_scan)

    rp = sub.add_parser("report", parents=[common], help="reports over CDR files")
    rpsub = rp.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = rpsub.add_parser("kpis", parents=[common],
                         help="a month's KPIs: revenue, usage, ARPU, roaming, fraud, MTTR")
    p.add_argument("--period", required=True, metavar="YYYY-MM")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report_kpis)

    b = sub.add_parser("bill", parents=[common], help="billing: invoices from CDR files")
    bsub = b.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = bsub.add_parser("run", parents=[common], help="invoice one period")
    p.add_argument("--period", required=True, metavar="YYYY-MM")
    p.add_argument("--out", metavar="DIR", help="default: DATA_DIR/<billing.invoice_dir>/"
                   "<period>")
    p.add_argument("--dry-run", action="store_true", help="show totals, write nothing")
    p.add_argument("--preview", action="store_true",
                   help="a period not ended yet: write its invoices as of now (default "
                   "DIR: ...<period>-preview) without billing the period")
    p.add_argument("--pdf", action="store_true", help="a PDF of each invoice as well")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bill_run)
    p = bsub.add_parser("reconcile", parents=[common],
                        help="CDR files vs balances vs invoices for a billed period")
    p.add_argument("--period", required=True, metavar="YYYY-MM")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bill_reconcile)

    p = sub.add_parser("rerate", parents=[common],
                       help="rate a period's CDRs again; move each subscriber's difference "
                       "once")
    p.add_argument("--period", required=True, metavar="YYYY-MM")
    p.add_argument("--plans", metavar="FILE", help="rate with these plans (a plans file); "
                   "default: the plan versions in the store")
    p.add_argument("--subscriber", metavar="MSISDN")
    p.add_argument("--run-id", metavar="ID", help="the run's id: the same id again moves "
                   "nothing (default: rerate-PERIOD-<time>)")
    p.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    p.add_argument("--report", metavar="FILE.csv",
                   help="the report (default: DATA_DIR/rerate/RUN_ID.csv; none on a dry run)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rerate)

    ap = sub.add_parser("api", parents=[common], help="the REST API: bearer tokens")
    apsub = ap.add_subparsers(dest="action", required=True, parser_class=_Parser)
    at = apsub.add_parser("token", parents=[common], help="bearer tokens of the REST API")
    atsub = at.add_subparsers(dest="token_action", required=True, parser_class=_Parser)
    p = atsub.add_parser("create", parents=[common],
                         help="a new token (printed once; the store keeps its hash)")
    p.add_argument("--role", required=True, choices=["admin", "care", "noc", "readonly"])
    p.add_argument("--name", default="", help="who or what uses it (shown in lists, logs "
                   "and the ledger)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_api_token_create)
    p = atsub.add_parser("list", parents=[common], help="the tokens (never the secrets)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_api_token_list)
    p = atsub.add_parser("revoke", parents=[common], help="a token stops working at once")
    p.add_argument("token_id", help="the id shown by 'ocs api token list'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_api_token_revoke)

    p = sub.add_parser("charge", parents=[common],
                       help="charge an event now (operator test charge, manual debit)")
    p.add_argument("msisdn")
    p.add_argument("--service", choices=[s.value for s in Service], default="sms")
    p.add_argument("--units", type=int, default=1,
                   help="bytes (data), seconds (voice) or messages (sms, mms)")
    p.add_argument("--destination", default="")
    p.add_argument("--rating-group", type=int)
    p.add_argument("--visited-network", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_charge)
    return parser


# -- helpers -------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config(getattr(args, "config", None), data_dir=getattr(args, "data_dir", None))
    # Balances, password hashes, MSISDNs and IMSIs: nothing we create is for other users
    # (0700/0600), or for the owner's group too with node.group_readable (0750/0640).
    os.umask(0o027 if cfg.node.group_readable else 0o077)
    return cfg


_SERVE_LOCK: list[int] = []
"""The open lock file of ``ocs serve`` (held for the life of the process)."""


def _lock_data_dir(cfg: Config) -> None:
    """Take the data directory for this server, before anything in it is touched: a
    second ``ocs serve`` on the same directory leaves with one line and changes nothing."""
    import fcntl

    data = Path(cfg.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    wanted = 0o750 if cfg.node.group_readable else 0o700
    with contextlib.suppress(OSError):  # tighten a directory made by an older version
        if data.stat().st_mode & 0o777 & ~wanted:
            data.chmod(wanted)
    path = data / "serve.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CliError(f"{path}: cannot open: {exc.strerror}", EXIT_FAILURE) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise CliError(f"{data}: in use by another 'ocs serve' (pid {holder})",
                       EXIT_FAILURE) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _SERVE_LOCK.append(fd)


def _open(cfg: Config, *, create: bool = False, local: bool = False) -> Store:
    """The LMDB store in DATA_DIR. With ``[store] backend = "redis"`` it holds this node's
    own tables only (alarms, NMS history, API tokens, billing runs): a command that would
    read subscribers, plans or charges from it is refused unless ``local``."""
    if cfg.store.backend == "redis" and not local:
        raise CliError("this command reads the LMDB store: not available with "
                       "store.backend = redis yet")
    return Store(cfg.data_dir, map_size_mb=cfg.store.map_size_mb, create=create)


def _ledger(cfg: Config, *, create: bool = False) -> Any:
    """Where subscribers, plans and balances are: the LMDB store, or with ``[store]
    backend = "redis"`` the Redis Cluster (a context manager either way)."""
    if cfg.store.backend == "redis":
        from ocs.store.cluster import ClusterStore

        return ClusterStore.from_config(cfg)
    return _open(cfg, create=create)


@contextlib.contextmanager
def _stores(cfg: Config) -> Iterator[tuple[Store, Any]]:
    """This node's LMDB store (its journal, billing runs, alarms) and where subscribers,
    plans and balances are: the same store, or with ``[store] backend = "redis"`` the
    Redis Cluster. CDRs are read from the files in ``[cdr] dir`` (on a cluster: every
    node's files gathered there) and this node's journal."""
    if cfg.store.backend == "redis":
        with _open(cfg, local=True) as local, _ledger(cfg) as ledger:
            yield local, ledger
    else:
        with _open(cfg) as store:
            yield store, store


def _say(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    """A command's result: ``text`` for people, ``data`` as JSON with --json."""
    if getattr(args, "json", False):
        _print_json(data)
    else:
        print(text)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on a terminal; into a pipe or file, tab-separated lines (a header line,
    then one per row) with every value whole, for grep, cut and awk."""
    if not sys.stdout.isatty():
        def cell(v: Any) -> str:
            return " ".join(str(v).split()) if any(c in str(v) for c in "\t\r\n") else str(v)

        out = ["\t".join(columns)] + ["\t".join(cell(v) for v in row) for row in rows]
        sys.stdout.write("\n".join(out) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*[str(v) for v in row])
    Console().print(t)


def _engine(cfg: Config, store: StorePort) -> ChargingEngine:
    from ocs.server import engine_settings

    return ChargingEngine(store, None, engine_settings(cfg))


# -- commands ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import shutil

    from ocs import logs, workers

    if args.workers is not None and not 0 <= args.workers <= 64:  # usage before config
        raise CliError("--workers: expected 0 (one per core) to 64")
    cfg = _config(args)
    _lock_data_dir(cfg)
    n = workers.resolve(args.workers, cfg)
    if n > 1:  # before ocs.metrics is imported: every worker's counters in files there
        metrics_dir = Path(cfg.data_dir) / "run" / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from ocs import app  # after the metrics directory is set: the metrics read it

    # every process of the server (workers, writer, exporter) reads the level from here
    os.environ[logs.LEVEL_ENV] = args.log_level or cfg.node.log_level
    logs.configure(cfg.node.log_format)
    app.run(cfg, n)
    return 0


def _default_plans_file(args: argparse.Namespace, cfg: Config) -> Path:
    if getattr(args, "plans", None):
        return Path(args.plans)
    return Path(cfg.source).parent / "plans.toml"


def _load_plans(store: StorePort, path: Path, effective_at: int | None = None,
                report: dict[str, int] | None = None) -> tuple[int, int, int]:
    doc = load_plans_file(path, stored_zone_ids(store))
    version = store.run_write(op_load_plans(doc, effective_at=effective_at, report=report))
    return len(doc.plans), len(doc.zones), version


def cmd_init(args: argparse.Namespace) -> int:
    cfg = _config(args)
    plans_file = _default_plans_file(args, cfg)
    # Validate before anything is written.
    load_plans_file(plans_file)
    demo = plans_file.parent / "demo_subscribers.csv"
    if args.demo and not demo.exists():
        raise CliError(f"{demo}: demo subscribers file not found")
    if cfg.store.backend == "redis":
        _open(cfg, create=True, local=True).close()  # this node's own tables
    with _ledger(cfg, create=True) as store:
        n_plans, n_zones, _ = _load_plans(store, plans_file)
        added = 0
        if args.demo:
            added = _import_missing(store, demo)
    where = (f"redis cluster {', '.join(cfg.store.redis.nodes)}"
             if cfg.store.backend == "redis" else str(cfg.data_dir / "ocs.lmdb"))
    _say(args, f"store ready at {where}: {n_plans} plans, {n_zones} "
         f"zones" + (f", {added} demo subscribers added" if args.demo else ""),
         {"store": str(cfg.data_dir / "ocs.lmdb"), "config": cfg.source,
          "plans_file": str(plans_file), "plans": n_plans, "zones": n_zones,
          "demo_subscribers_added": added})
    return 0


def _import_missing(store: StorePort, path: Path) -> int:
    """Add the rows of a subscriber CSV whose MSISDN is not in the store yet."""
    import csv

    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    added = 0
    for row in rows:
        msisdn = validate_msisdn(row["msisdn"])
        with store.view() as view:
            if view.get(b"subscribers", msisdn.encode()) is not None:
                continue
        new = NewSubscriber(
            msisdn=msisdn,
            plan_id=row["plan"],
            imsi=row.get("imsi", ""),
            username=row.get("username", ""),
            password=row.get("password", ""),
            balance=row.get("balance", ""),
            postpaid=row.get("mode", "") == "postpaid",
            credit_limit=row.get("credit_limit", ""),
            roaming=row.get("roaming", "yes") not in ("no", "false", "0"),
        )
        store.run_write(op_add_subscriber(new))
        added += 1
    return added


def cmd_plan_load(args: argparse.Namespace) -> int:
    cfg = _config(args)
    effective = _event_time(args.effective, "--effective") if args.effective else None
    changed: dict[str, int] = {}
    with _ledger(cfg) as store:
        n_plans, n_zones, version = _load_plans(store, Path(args.file), effective, changed)
    news = ", ".join(f"{pid} v{n}" for pid, n in sorted(changed.items())) or "none"
    when = f" effective {_iso(effective)}" if effective is not None else ""
    _say(args, f"loaded {n_plans} plans and {n_zones} zones (plans version {version}); "
         f"new versions{when}: {news}",
         {"plans": n_plans, "zones": n_zones, "version": version,
          "new_versions": changed,
          "effective_at": _iso(effective) if effective is not None else None})
    return 0


def cmd_plan_import_rates(args: argparse.Namespace) -> int:
    from ocs.provisioning import stored_plan_versions
    from ocs.rating.deck import read_deck, with_deck
    from ocs.rating.plans import PlansDocument

    cfg = _config(args)
    effective = _event_time(args.effective, "--effective") if args.effective else None
    service = Service(args.service)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    started = time.monotonic()
    with _ledger(cfg) as store:
        versions = stored_plan_versions(store, args.plan)
        if not versions:
            raise CliError(f"no plan {args.plan!r}", EXIT_FAILURE)
        zones = stored_zone_ids(store)
        with _progress(f"reading {path.name}") as tick:
            rates = read_deck(path, service, versions[-1].table, known_zones=zones,
                              progress=tick)
        table = with_deck(versions[-1].table, service, rates)
        changed: dict[str, int] = {}
        store.run_write(op_load_plans(PlansDocument(plans=(table,), zones=()),
                                      effective_at=effective, report=changed,
                                      based_on={args.plan: versions[-1].version}))
    secs = time.monotonic() - started
    version = changed.get(args.plan)
    when = _iso(effective) if effective is not None else "now"
    _say(args, f"{len(rates):,} {service.value} rates from {path.name} in {secs:.1f} s: "
         + (f"plan {args.plan} version {version}, effective {when}" if version else
            f"plan {args.plan} already has exactly these rates (no new version)"),
         {"plan": args.plan, "service": service.value, "rates": len(rates),
          "version": version, "effective_at": _iso(effective) if effective is not None
          else None, "seconds": round(secs, 3)})
    return 0


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int], None]]:
    """A progress line on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}: {task.completed:,} rows"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.update(task, completed=n)


def cmd_plan_export(args: argparse.Namespace) -> int:
    from ocs.provisioning import stored_plan_versions
    from ocs.rating.deck import export_deck

    cfg = _config(args)
    with _ledger(cfg) as store:
        versions = stored_plan_versions(store, args.id)
        zones = stored_zones(store)
    if not versions:
        raise CliError(f"no plan {args.id!r}", EXIT_FAILURE)
    chosen = versions[-1] if args.version is None else next(
        (v for v in versions if v.version == args.version), None)
    if chosen is None:
        raise CliError(f"plan {args.id!r} has no version {args.version}", EXIT_FAILURE)
    if args.deck:
        text = export_deck(chosen.table, Service(args.deck))
    else:
        import tomli_w

        used = {z for r in chosen.table.get("rates", []) for z in r.get("zones", [])}
        doc: dict[str, Any] = {}
        if used - {"*"}:
            doc["zones"] = [{"id": z, "networks": zones[z]} for z in sorted(used - {"*"})
                            if z in zones]
        doc["plans"] = [chosen.table]
        text = (f"# plan {args.id} version {chosen.version} (ocs plan export)\n"
                + tomli_w.dumps(doc))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_plan_history(args: argparse.Namespace) -> int:
    from ocs.charging.plans import PlanCache
    from ocs.provisioning import stored_plan_versions

    cfg = _config(args)
    with _ledger(cfg) as store:
        versions = stored_plan_versions(store, args.id)
        current = PlanCache().in_store(store).plan_at(args.id, int(time.time()))
    if not versions:
        raise CliError(f"no plan {args.id!r}", EXIT_FAILURE)
    items = [{"version": v.version,
              "effective_at": _iso(v.effective_at) if v.effective_at else "from the start",
              "loaded_at": _iso(v.loaded_at) if v.loaded_at else None,
              "rates": len(v.table.get("rates", [])),
              "in_effect_now": current is not None and current.version == v.version}
             for v in versions]
    if args.json:
        _print_json(items)
    else:
        _table(f"Plan {args.id}: versions", ["version", "effective", "loaded", "rates", "now"],
               [[i["version"], i["effective_at"], i["loaded_at"] or "-", i["rates"],
                 "in effect" if i["in_effect_now"] else ""] for i in items])
    return 0


def cmd_plan_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _ledger(cfg) as store:
        plans = all_plans(store)
    items = [views.plan(t) for _, t in sorted(plans.items())]
    if args.json:
        _print_json(items)
    else:
        _table("Plans", ["id", "name", "mode", "currency", "monthly fee", "rates"],
               [[p["id"], p["name"], p["mode"], p["currency"], p["monthly_fee"],
                 len(p["rates"])] for p in items])
    return 0


def cmd_plan_show(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _ledger(cfg) as store:
        table = all_plans(store).get(args.id)
    if table is None:
        raise CliError(f"no plan {args.id!r}")
    item = views.plan(table)
    if args.json:
        _print_json(item)
    else:
        print(f"{item['id']}: {item['name']} ({item['mode']}, {item['currency']}, monthly fee "
              f"{item['monthly_fee']}, time zone {item['timezone']})")
        _table("Rates", ["id", "service", "price", "unit", "prefix", "rating groups", "zones",
                         "bands", "slices"],
               [[r["id"], r["service"], r["price"], r["unit"], r["prefix"] or "*",
                 r["rating_groups"] or "any", ",".join(r["zones"]) or "home",
                 ",".join(r["bands"]) or "all", ",".join(r["slices"]) or "any"]
                for r in item["rates"]])
    return 0


def cmd_sub_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
    new = NewSubscriber(
        msisdn=args.msisdn,
        plan_id=args.plan,
        imsi=args.imsi,
        username=args.username,
        password=args.password,
        balance=args.balance,
        postpaid=args.postpaid,
        credit_limit=args.credit_limit,
        roaming=args.roaming,
        name=args.name,
        address=args.address,
    )
    # Validate the format before touching the store.
    validate_msisdn(new.msisdn)
    with _ledger(cfg) as store:
        sub = store.run_write(op_add_subscriber(new))
    _say(args, f"subscriber {sub.msisdn} added on plan {sub.plan_id} ({sub.mode})",
         {"msisdn": sub.msisdn, "plan": sub.plan_id, "mode": sub.mode, "status": sub.status})
    return 0


def cmd_sub_show(args: argparse.Namespace) -> int:
    cfg = _config(args)
    msisdn = validate_msisdn(args.msisdn)
    with _ledger(cfg) as store:
        item = views.subscriber(_engine(cfg, store), msisdn)
    if item is None:
        raise CliError(f"no subscriber {msisdn}")
    if args.json:
        _print_json(item)
    else:
        for k, v in item.items():
            print(f"{k:>13}: {v}")
    return 0


def cmd_sub_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg.store.backend == "redis":
        with _ledger(cfg) as cluster:
            items, _ = views.cluster_subscriber_items(cluster)
    else:
        with _open(cfg) as store:
            items, _ = views.subscriber_items(store)
    if args.json:
        _print_json(items)
    else:
        _table(f"Subscribers ({len(items)})",
               ["msisdn", "plan", "mode", "status", "balance", "reserved"],
               [[i["msisdn"], i["plan"], i["mode"], i["status"], i["balance"],
                 i["reserved"]] for i in items])
    return 0


def cmd_sub_topup(args: argparse.Namespace) -> int:
    from ocs.provisioning import op_credit

    cfg = _config(args)
    msisdn = validate_msisdn(args.msisdn)
    op = op_credit(msisdn, args.amount, reference=args.reference,
                   actor=f"cli:{_user()}")
    with _ledger(cfg) as store:
        top = store.run_write(op)
    out = views.topup(msisdn, top, args.reference)
    _say(args, f"{msisdn}: balance {format_amount(top.balance.balance)}"
         + (f" (reference {args.reference!r} was already credited: nothing more)"
            if top.replayed else ""), out)
    return 0


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def cmd_sub_history(args: argparse.Namespace) -> int:
    cfg = _config(args)
    msisdn = validate_msisdn(args.msisdn)
    since = _event_time(args.since, "--from") if args.since else None
    until = _event_time(args.until, "--to") if args.until else None
    with _stores(cfg) as (local, ledger):
        items = views.history(ledger, views.subscriber_cdrs(cfg.under_data(cfg.cdr.dir),
                                                            local, msisdn),
                              msisdn, since=since, until=until)
    if items is None:
        raise CliError(f"no subscriber {msisdn}", EXIT_FAILURE)
    if args.json:
        _print_json(items)
    else:
        _table(f"History of {msisdn}", ["time", "kind", "amount", "service", "units",
                                        "reference / record", "by", "balance after"],
               [[i["time"], i["kind"], i["amount"], i["service"],
                 "" if i["units"] is None else i["units"],
                 i["reference"] or i["record_id"], i["actor"], i["balance_after"] or ""]
                for i in items])
    return 0


def cmd_sub_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    validate_msisdn(args.msisdn)
    with _ledger(cfg) as store:
        _old, new = store.run_write(op_set_status(args.msisdn, args.status_action))
    _say(args, f"{new.msisdn}: {new.status}", {"msisdn": new.msisdn, "status": new.status})
    return 0


def cmd_sub_set(args: argparse.Namespace) -> int:
    from ocs.provisioning import SubscriberChange, op_set_subscriber

    cfg = _config(args)
    msisdn = validate_msisdn(args.msisdn)
    change = SubscriberChange(imsi=args.imsi, username=args.username,
                              password=args.password, plan_id=args.plan,
                              credit_limit=args.credit_limit, roaming=args.roaming,
                              name=args.name, address=args.address)
    if change == SubscriberChange():
        raise CliError("nothing to change (see ocs subscriber set --help)")
    with _ledger(cfg) as store:
        new, changed = store.run_write(op_set_subscriber(msisdn, change))
    _say(args, f"{msisdn}: " + (f"changed {', '.join(changed)}" if changed else
                                "nothing changed (the values were already so)"),
         {"msisdn": msisdn, "changed": changed, "imsi": new.imsi, "username": new.username,
          "plan": new.plan_id, "credit_limit": format_amount(new.credit_limit),
          "roaming": new.roaming, "name": new.customer_name,
          "address": new.billing_address})
    return 0


def cmd_sub_plan(args: argparse.Namespace) -> int:
    cfg = _config(args)
    validate_msisdn(args.msisdn)
    with _ledger(cfg) as store:
        old, new = store.run_write(op_change_plan(args.msisdn, args.plan))
    _say(args, f"{new.msisdn}: plan {old.plan_id} -> {new.plan_id}",
         {"msisdn": new.msisdn, "old_plan": old.plan_id, "plan": new.plan_id})
    return 0


def cmd_sub_import(args: argparse.Namespace) -> int:
    cfg = _config(args)
    path = Path(args.file)
    if not path.exists():
        raise CliError(f"{path}: file not found")
    started = time.perf_counter()
    # on a cluster: a transaction per subscriber, 16 at a time
    run = import_subscribers_each if cfg.store.backend == "redis" else import_subscribers
    with _ledger(cfg) as store:
        if args.no_progress or not sys.stderr.isatty():
            n = run(store, path)
        else:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("{task.description}"), BarColumn(),
                          TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
                          transient=True) as prog:
                tasks: dict[str, Any] = {}

                def progress(phase: str, done: int, total: int) -> None:
                    if phase not in tasks:
                        tasks[phase] = prog.add_task(phase, total=total)
                    prog.update(tasks[phase], completed=done)

                n = run(store, path, progress=progress)
    elapsed = time.perf_counter() - started
    _say(args, f"imported {n} subscribers in {elapsed:.1f} s",
         {"imported": n, "seconds": round(elapsed, 3)})
    return 0


def cmd_store_backup(args: argparse.Namespace) -> int:
    from ocs.store.backup import backup

    cfg = _config(args)
    with _open(cfg, local=True) as store:
        m = backup(store, args.dir, source=str(store.path))
    _say(args, f"backup of {m['source']} in {Path(args.dir) / m['file']}: {m['bytes']:,} bytes, "
         f"{m['subscribers']} subscribers, CDRs up to {m['cdr_seq']} "
         f"({m['cdr_journal']} not yet in files)", m)
    return 0


def cmd_store_migrate(args: argparse.Namespace) -> int:
    from ocs.ledger.migrate import migrate
    from ocs.store.cluster import ClusterStore

    cfg = _config(args)
    target = load_config(args.to_config)
    if cfg.store.backend != "lmdb":
        raise CliError("--config: the store to copy must be an LMDB store (backend lmdb)")
    if target.store.backend != "redis":
        raise CliError(f"{args.to_config}: store.backend must be redis")
    _lock_data_dir(cfg)  # no server charging on it meanwhile
    with _open(cfg) as store, ClusterStore.from_config(target) as cluster:
        moved = migrate(store, cluster, answer_retention_s=cfg.store.answer_retention_s)
    _say(args, f"moved {moved.subscribers} subscribers ({moved.already_there} already "
         f"there), {moved.reservations} open reservations, {moved.answers} stored answers "
         f"and {moved.plans} plans to redis cluster {', '.join(target.store.redis.nodes)}"
         + "".join(f"\nskipped {s}" for s in moved.skipped),
         {"subscribers": moved.subscribers, "already_there": moved.already_there,
          "reservations": moved.reservations, "answers": moved.answers,
          "plans": moved.plans, "skipped": moved.skipped})
    return EXIT_FAILURE if moved.skipped else 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from ocs.store.verify import verify

    cfg = _config(args)
    if cfg.store.backend == "redis":
        if args.with_cdrs:
            raise CliError("--with-cdrs: not available with store.backend = redis yet")
        with _ledger(cfg) as cluster:
            diffs = cluster.verify()
    else:
        with _open(cfg) as store:
            diffs = verify(store, cfg.under_data(cfg.cdr.dir) if args.with_cdrs else None)
    if args.json:
        _print_json({"ok": not diffs, "differences": diffs})
    else:
        for d in diffs:
            print(d)
        if not diffs:
            print("store consistent" + (" with the CDR files" if args.with_cdrs else ""))
    return EXIT_FAILURE if diffs else 0


def cmd_nms_elements(args: argparse.Namespace) -> int:
    cfg = _config(args)
    els = cfg.nms.elements if cfg.nms is not None else ()
    items = [{"id": e.id, "type": e.type, "address": e.address,
              "auth": f"v3:{e.v3_user}" if e.v3_user else "v2c",
              "capacity_mbps": e.capacity_mbps} for e in els]
    if args.json:
        _print_json(items)
    else:
        _table(f"Elements ({len(items)})", ["id", "type", "address", "auth", "capacity Mbit/s"],
               [[i["id"], i["type"], i["address"], i["auth"], i["capacity_mbps"] or "ifHighSpeed"]
                for i in items])
    return 0


def cmd_nms_poll(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from ocs.nms.derive import derive, health, thresholds
    from ocs.nms.poller import Poller, Unreachable
    from ocs.nms.service import limits_of

    cfg = _config(args)
    el = _nms_element(cfg, args.id)
    nms = cfg.nms
    assert nms is not None
    users = {u.name: u for u in cfg.snmp.v3_users} if cfg.snmp else {}

    async def run() -> Any:
        poller = Poller(timeout_s=nms.timeout_s, retries=nms.retries, v3_users=users)
        try:
            first = await poller.poll(el.address, community=el.community, v3_user=el.v3_user)
            await asyncio.sleep(max(0.1, args.interval))
            second = await poller.poll(el.address, community=el.community,
                                       v3_user=el.v3_user)
        finally:
            poller.close()
        return derive(first, second, el.capacity_mbps)

    try:
        fig = asyncio.run(run())
    except Unreachable as exc:
        raise CliError(f"{el.id}: {exc}", EXIT_FAILURE) from None
    limits = limits_of(nms)
    score, parts = health(fig, limits)
    above = [c.resource for c in thresholds(fig, limits, frozenset())]
    out = {"id": el.id, "cpu_pct": fig.cpu_pct, "memory_pct": fig.memory_pct,
           "capacity_pct": fig.capacity_pct, "packet_loss_pct": fig.packet_loss_pct,
           "health": score, "components": parts, "above_thresholds": above,
           "interfaces": [dataclasses.asdict(i) for i in fig.interfaces]}
    if args.json:
        _print_json(out)
        return 0

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    print(f"{el.id}: health {score}/100, CPU {pct(fig.cpu_pct)} %, memory "
          f"{pct(fig.memory_pct)} %" + (f"; above thresholds: {', '.join(above)}"
                                         if above else ""))
    _table("Interfaces", ["interface", "admin", "oper", "in Mbit/s", "out Mbit/s", "util %",
                          "loss %"],
           [[i.descr, "up" if i.admin_up else "down", "up" if i.oper_up else "down",
             pct(i.in_mbps), pct(i.out_mbps), pct(i.utilization_pct), pct(i.packet_loss_pct)]
            for i in fig.interfaces])
    return 0


def _nms_element(cfg: Config, element: str) -> Any:
    el = next((e for e in cfg.nms.elements if e.id == element), None) if cfg.nms else None
    if cfg.nms is None or el is None:
        raise CliError(f"no element {element!r} in [[nms.elements]]", EXIT_FAILURE)
    return el


def cmd_nms_health(args: argparse.Namespace) -> int:
    from ocs.nms.derive import Figures, IfFigures, health
    from ocs.nms.history import latest
    from ocs.nms.service import limits_of

    cfg = _config(args)
    _nms_element(cfg, args.id)
    assert cfg.nms is not None
    with _open(cfg, local=True) as store:
        s = latest(store, args.id)
    if s is None:
        raise CliError(f"{args.id}: not polled yet (is ocs serve running?)", EXIT_FAILURE)
    fig = Figures(s.cpu_pct, s.memory_pct, tuple(
        IfFigures(0, i.descr, i.admin_up, i.oper_up, i.in_mbps, i.out_mbps, i.utilization_pct,
                  i.packet_loss_pct) for i in s.interfaces))
    score, parts = health(fig, limits_of(cfg.nms))
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.at))
    if args.json:
        _print_json({"id": args.id, "polled_at": at, "health": score, "components": parts})
        return 0
    print(f"{args.id}: health {score}/100 (polled {at})")
    _table("Components", ["component", "value", "limit", "score", "weight", "points"],
           [[p["component"], "-" if p["value"] is None else p["value"], p["limit"],
             p["score"], p["weight"], p["points"]] for p in parts])
    return 0


def cmd_nms_forecast(args: argparse.Namespace) -> int:
    from ocs.nms.history import forecast, samples

    cfg = _config(args)
    _nms_element(cfg, args.id)
    assert cfg.nms is not None
    with _open(cfg, local=True) as store:
        history = samples(store, args.id)
    items = forecast(history, cfg.nms.thresholds.capacity_pct)
    if args.json:
        _print_json({"id": args.id, "method": "least squares over the stored history",
                     "samples": len(history), "interfaces": items})
        return 0
    _table(f"{args.id}: capacity forecast ({len(history)} samples)",
           ["interface", "now %", "growth %/day", f"> {cfg.nms.thresholds.capacity_pct:g} % on",
            "100 % on"],
           [[i["interface"], i["current_pct"], i["growth_pct_per_day"] or "-",
             i["crosses_threshold_at"] or "-", i["full_at"] or "-"] for i in items])
    return 0


def cmd_cdr_flush(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _open(cfg, local=True) as store:
        asked = 0
        if cfg.store.backend == "redis":
            asked = _drain_cluster(cfg, store)
        res = CdrExporter.of(cfg, store).flush(int(time.time()))
    out: dict[str, Any] = {"closed": list(res.closed), "rows": res.rows}
    text = (f"closed {', '.join(n for n in res.closed)} ({res.rows} new rows)" if res.closed
            else "no open CDR file here; nothing to flush")
    if asked:
        nodes = _other_nodes_flushed(cfg, asked)
        out["nodes"] = nodes
        text += "".join(f"\n{n}: flushed" for n in sorted(nodes))
    _say(args, text, out)
    return 0


FLUSH_WAIT_S = 30.0
"""How long ``ocs cdr flush`` waits for the other serving nodes to close their files."""
NODE_GONE_S = 60.0
"""A node not heard from for this long is not serving (its journal waits for it)."""


def _other_nodes_flushed(cfg: Config, asked: int) -> list[str]:
    """Wait until every other node heard from lately has done flush ``asked`` (closed its
    open file after journalling what it drained); the nodes that did. One that does not
    in FLUSH_WAIT_S is an error: its CDRs are not all in closed files."""
    with _ledger(cfg) as cluster:
        deadline = time.monotonic() + FLUSH_WAIT_S
        while True:
            now = time.time()
            live = {n: done for n, (heard, done) in cluster.nodes().items()
                    if n != cfg.node.name and now - heard < NODE_GONE_S}
            late = sorted(n for n, done in live.items() if done < asked)
            if not late:
                return sorted(live)
            if time.monotonic() > deadline:
                raise CliError("CDR files not closed by " + ", ".join(late) + f" within "
                               f"{FLUSH_WAIT_S:.0f} s (their CDRs are in their journals)",
                               EXIT_FAILURE)
            time.sleep(0.2)


def _drain_cluster(cfg: Config, store: Store) -> int:
    """Ask every serving node to flush (the request's number), and take every CDR in the
    cluster's outboxes into this node's journal (then the flush closes them in this
    node's files); refused while another node holds claimed rows it has not journalled
    (they go into that node's files)."""
    from ocs.cdr.outbox import drain

    with _ledger(cfg) as cluster:
        asked: int = cluster.flush_asked()  # every serving node closes its open file
        drain(cluster, store, cfg.node.name, recover=True)
        deadline = time.monotonic() + 10
        while (pending := cluster.claimed_elsewhere(cfg.node.name)) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
    if pending:
        raise CliError("CDRs claimed by other nodes are not journalled yet: " + ", ".join(
            f"{node} ({n})" for node, n in sorted(pending.items())))
    return asked


def cmd_cdr_export(args: argparse.Namespace) -> int:
    from ocs.billing.kpis import KpiError, export_parquet

    cfg = _config(args)
    out = Path(args.out)
    started = time.perf_counter()
    try:
        rows = export_parquet(cfg.under_data(cfg.cdr.dir), args.period, out)
    except KpiError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    _say(args, f"{args.period}: {rows} CDRs to {out} ({time.perf_counter() - started:.1f} s)",
         {"period": args.period, "rows": rows, "out": str(out), "format": args.format})
    return 0


def cmd_report_kpis(args: argparse.Namespace) -> int:
    from ocs.billing.kpis import KpiError, compute

    cfg = _config(args)
    with _stores(cfg) as (store, ledger):  # (on a cluster: this node's alarms)
        try:
            k = compute(cfg.under_data(cfg.cdr.dir), store, args.period,
                        ledger=ledger)
        except KpiError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    if args.json:
        _print_json(k)
        return 0
    print(f"{k['period']} ({k['from']} to {k['to']}, UTC): {k['rows']:,} CDR rows in "
          f"{k['files']} closed files, read in {k['seconds']} s")
    print("revenue: " + (", ".join(f"{v} {c}" for c, v in k["revenue"].items()) or "none")
          + f"; active subscribers {k['active_subscribers']:,}; ARPU "
          + (", ".join(f"{v} {c}" for c, v in k["arpu"].items()) or "-"))
    r = k["roaming"]
    print(f"roaming: {r['records']:,} records ({r['share_records'] or '-'}), charge "
          f"{r['charge']} ({r['share_charge'] or '-'} of usage charges)")
    f, a = k["fraud_cases"], k["alarms"]
    print(f"fraud cases: {f['opened']} opened, {f['resolved']} resolved; alarms: "
          f"{a['raised']} raised, {a['cleared']} cleared, MTTR "
          + (f"{a['mttr_s']:.0f} s" if a["mttr_s"] is not None else "-"))
    _table("Usage by service", ["service", "records", "units", "charge"],
           [[i["service"], i["records"], i["units"], i["charge"]] for i in k["by_service"]])
    _table("Top destinations (by charge)", ["rate", "service", "records", "units", "charge"],
           [[i["rate_id"], i["service"], i["records"], i["units"], i["charge"]]
            for i in k["top_destinations"]])
    return 0


def cmd_cdr_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    cdr_dir = cfg.under_data(cfg.cdr.dir)
    items = []
    for p in sorted(cdr_dir.glob("cdr_*.csv")):
        with p.open("rb") as f:
            rows = max(0, sum(1 for _ in f) - 1)
        items.append({"file": p.name, "path": str(p), "bytes": p.stat().st_size,
                      "records": rows})
    if args.json:
        _print_json(items)
    else:
        _table("Closed CDR files", ["file", "records", "bytes"],
               [[i["file"], i["records"], i["bytes"]] for i in items])
    return 0


def _print_explanation(e: dict[str, Any]) -> None:
    where = e["destination"] or "-"
    print(f"plan {e['plan']} v{e['plan_version']}, {e['service']} to {where}, "
          f"{e['units']} units at {e['at']} "
          f"(local {e['local_time']}), " + (f"roaming in zone {e['zone'] or '-'}"
                                             if e["roaming"] else "at home")
          + (f", rating group {e['rating_group']}" if e["rating_group"] is not None else "")
          + (f", slice {e['slice']}" if e["slice"] else ""))
    _table("Candidate rates", ["rate", "prefix", "price", "matched", "why"],
           [[c["rate"], c["prefix"] or "*", f"{c['price']}/{c['unit']}",
             "yes" if c["matched"] else "no", c["why"]] for c in e["candidates"]])
    if e["unlisted_other_prefixes"]:
        print(f"(and {e['unlisted_other_prefixes']:,} more {e['service']} rates whose prefix "
              "does not start the destination)")
    print(f"winner: {e['winner'] or 'none'}")
    for line in e["arithmetic"]:
        print(f"  {line}")


def _event_time(text: str | None, option: str = "--at") -> int:
    import datetime as dt

    if not text:
        return int(time.time())
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option}: {text!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise CliError(f"{option}: {text!r} has no time zone (add Z or +01:00)")
    return int(t.timestamp())


def cmd_rate_explain(args: argparse.Namespace) -> int:
    from ocs.charging.explain import ExplainError, explain_event
    from ocs.rating.plans import normalise_slice

    cfg = _config(args)
    if args.units < 0:
        raise CliError("--units must not be negative")
    try:
        slice_ = normalise_slice(args.slice) if args.slice else ""
    except PlanError as exc:
        raise CliError(f"--{exc}") from None
    ids = None
    if args.msisdn:
        ids = ((IdKind.MSISDN, validate_msisdn(args.msisdn)),)
    elif args.imsi:
        ids = ((IdKind.IMSI, args.imsi),)
    with _ledger(cfg) as store:
        try:
            res = explain_event(_engine(cfg, store), service=Service(args.service),
                                units=args.units, at=_event_time(args.at), subscriber=ids,
                                plan_id=args.plan or "", rating_group=args.rating_group,
                                destination=args.destination,
                                visited_network=args.visited_network, slice_=slice_)
        except ExplainError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    out = res.to_json()
    if args.json:
        _print_json(out)
    else:
        if res.msisdn:
            free = ("" if res.allowance_free is None else
                    f", allowance left this cycle: {res.allowance_free}")
            print(f"subscriber {res.msisdn}{free}")
        if res.refusal:
            print(f"refused before rating: {res.refusal}")
        _print_explanation(out)
    return 0 if out["winner"] or out["zero_rated"] else EXIT_FAILURE


def cmd_cdr_explain(args: argparse.Namespace) -> int:
    from ocs.cdr.reader import every_record
    from ocs.charging.explain import explain_cdr

    cfg = _config(args)
    cdr_dir = cfg.under_data(cfg.cdr.dir)
    with _stores(cfg) as (store, ledger):
        target = next((r for r in every_record(cdr_dir, store)
                       if r.record_id == args.record_id), None)
        if target is None:
            raise CliError(f"no CDR {args.record_id!r} in {cdr_dir} or the journal",
                           EXIT_FAILURE)
        earlier = []  # the subscriber's records before it: its session, a refund's charge
        for r in every_record(cdr_dir, store):
            if r.record_id == target.record_id:
                break
            if r.msisdn == target.msisdn:
                earlier.append(r)
        res = explain_cdr(_engine(cfg, ledger), target, earlier)
    out = res.to_json()
    if args.json:
        _print_json(out)
    else:
        print(f"CDR {target.record_id}: {target.msisdn}, {target.service} "
              f"{target.units} units, {target.result}, rate {target.rate_id}, charged "
              f"{out['charge']} {target.currency}")
        if res.explanation is not None:
            _print_explanation(out["explanation"])
        for note in res.notes:
            print(note)
        if res.reproduced is not None:
            print("reproduced exactly" if res.reproduced else "NOT reproduced")
    return EXIT_FAILURE if res.reproduced is False else 0


def cmd_alarms_list(args: argparse.Namespace) -> int:
    from ocs.noc import alarms as noc

    cfg = _config(args)
    with _open(cfg, local=True) as store, store.read() as txn:
        items = [noc.decode(v) for _k, v in txn.cursor(db=store.dbs[b"alarms"])]
    if args.active:
        items = [a for a in items if a.active]
    items.sort(key=lambda a: (-a.last_seen, -a.alarm_id))
    if args.json:
        _print_json([noc.to_json(a) for a in items])
    else:
        _table(f"Alarms ({len(items)})", ["id", "severity", "element", "resource", "type",
                                           "cause", "count", "ack", "last seen"],
               [[a.alarm_id, a.perceived_severity + (" (flapping)" if a.flapping else ""),
                 a.element, a.resource, a.alarm_type, a.probable_cause, a.count,
                 "yes" if a.acknowledged else "", _iso(a.last_seen)] for a in items])
    return 0


def _iso(ts: int) -> str:
    from ocs.cdr.fileformat import iso_utc

    return iso_utc(ts)


def cmd_alarms_action(args: argparse.Namespace) -> int:
    import getpass

    from ocs.noc import alarms as noc

    cfg = _config(args)
    act = noc.OperatorAction(alarm_id=args.id, action=args.alarm_action, at=int(time.time()),
                             user=getpass.getuser())
    with _open(cfg, local=True) as store:
        try:
            alarm = store.run_write(lambda tx: noc.operator(tx, act))
        except ValueError as exc:
            raise CliError(str(exc)) from None
    state = "acknowledged" if args.alarm_action == "ack" else "cleared"
    _say(args, f"alarm {alarm.alarm_id} ({alarm.element} {alarm.resource} "
         f"{alarm.alarm_type}) {state}", {"alarm_id": alarm.alarm_id, "state": state})
    return 0


def _cases(store: StorePort) -> list[Any]:
    from ocs.fraud.cases import decode_case

    return [decode_case(v) for v in store.fraud_cases()]


def cmd_fraud_cases_list(args: argparse.Namespace) -> int:
    from ocs.fraud.cases import to_json

    cfg = _config(args)
    with _ledger(cfg) as store:
        items = _cases(store)
    if args.open:
        items = [c for c in items if c.status == "open"]
    items.sort(key=lambda c: (-c.updated_at, -c.case_id))
    if args.json:
        _print_json([to_json(c) for c in items])
    else:
        _table(f"Fraud cases ({len(items)})", ["id", "msisdn", "status", "action", "score",
                                                "measure", "indicators", "updated"],
               [[c.case_id, c.msisdn, c.status, c.decision, c.score, c.measure or "-",
                 ", ".join(sorted({f.name for f in c.findings})), _iso(c.updated_at)]
                for c in items])
    return 0


def cmd_fraud_cases_show(args: argparse.Namespace) -> int:
    from ocs.fraud.cases import load_case, to_json

    cfg = _config(args)
    with _ledger(cfg) as store, store.view() as view:
        case = load_case(view, args.id)
    if case is None:
        raise CliError(f"no fraud case {args.id}")
    if args.json:
        _print_json(to_json(case))
        return 0
    print(f"case {case.case_id}: {case.msisdn} — {case.decision} (score {case.score}), "
          f"{case.status}; measure: {case.measure or 'none (review)'}")
    print(f"opened {_iso(case.opened_at)}, updated {_iso(case.updated_at)}"
          + (f", resolved {_iso(case.resolved_at)}: {case.resolution}"
             + (" (reinstated)" if case.reinstated else "") if case.resolved_at else ""))
    print("why:")
    for f in case.findings:
        print(f"  {f.name} = {f.value} (threshold {f.threshold}; weight {f.weight}) "
              f"at {_iso(f.at)}")
    return 0


def cmd_fraud_cases_resolve(args: argparse.Namespace) -> int:
    from ocs.fraud.cases import resolve

    cfg = _config(args)
    with _ledger(cfg) as store:
        try:
            case = store.run_write(lambda tx: resolve(tx, args.id, reinstate=args.reinstate,
                                                      note=args.note, at=int(time.time())))
        except (KeyError, ValueError) as exc:
            raise CliError(str(exc).strip("'\"")) from None
    _say(args, f"case {case.case_id} resolved" + (f"; {case.msisdn} reinstated"
                                                   if case.reinstated else ""),
         {"case_id": case.case_id, "msisdn": case.msisdn, "reinstated": case.reinstated})
    return 0


def cmd_fraud_scan(args: argparse.Namespace) -> int:
    from ocs.cdr.reader import CdrFormatError, closed_cdr_files
    from ocs.fraud import scan

    cfg = _config(args)
    try:
        start, end = scan.period_bounds(args.period)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise CliError("ocs fraud scan needs scikit-learn: pip install 'ocs[ml]'",
                       EXIT_FAILURE)
    files = closed_cdr_files(cfg.under_data(cfg.cdr.dir))
    try:
        keys, rows = scan.daily_features(files, start, end)
    except CdrFormatError as exc:
        raise CliError(str(exc)) from None
    if not rows:
        raise CliError(f"no usage in {args.period} in {len(files)} CDR file(s)")
    if args.model:
        try:
            model = scan.load_model(Path(args.model))
        except (OSError, ValueError) as exc:
            raise CliError(f"{args.model}: {exc}") from None
    else:
        model = scan.fit(rows, seed=args.seed)
    if args.save_model:
        scan.save_model(model, Path(args.save_model))
    ranked = scan.rank(model, keys, rows)
    out = Path(args.out) if args.out else cfg.under_data("fraud") / f"scan_{args.period}.csv"
    scan.write_csv(ranked, out)
    top = ranked[: args.top]
    if args.json:
        _print_json([{"rank": r.rank, "msisdn": r.msisdn, "day": r.day, "score": r.score,
                      **dict(zip(scan.FEATURES, r.features, strict=True))} for r in top])
    else:
        _table(f"Most anomalous subscribers, {args.period} ({len(ranked):,} ranked, "
               f"{len(rows):,} subscriber-days)", ["rank", "msisdn", "day", "score",
                                                    *scan.FEATURES],
               [[r.rank, r.msisdn, r.day, f"{r.score:.3f}", *(f"{v:g}" for v in r.features)]
                for r in top])
        print(f"report: {out}")
    return 0


def cmd_bill_run(args: argparse.Namespace) -> int:
    from ocs.billing.run import Biller, check_period

    cfg = _config(args)
    check_period(args.period)
    out = Path(args.out) if args.out else cfg.under_data(cfg.billing.invoice_dir) / (
        args.period + ("-preview" if args.preview else ""))
    started = time.perf_counter()
    with _stores(cfg) as (store, ledger):
        biller = Biller(store, cfg.under_data(cfg.cdr.dir), cfg.billing, ledger=ledger)
        if args.no_progress or not sys.stderr.isatty():
            summary, _inv = biller.run(args.period, out, dry_run=args.dry_run,
                                       preview=args.preview, pdf=args.pdf)
        else:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            with Progress(TextColumn("reading CDR files"), BarColumn(), DownloadColumn(),
                          transient=True) as prog:
                task = prog.add_task("cdr", total=None)
                summary, _inv = biller.run(
                    args.period, out, dry_run=args.dry_run, preview=args.preview,
                    pdf=args.pdf, progress=lambda done, total: prog.update(task, completed=done,
                                                             total=total))
    elapsed = time.perf_counter() - started
    what = ("dry run: would write" if args.dry_run else "preview (not billed): wrote"
            if args.preview else "re-ran" if summary.rerun else "wrote")
    where = "" if args.dry_run else f" to {out}"
    _say(args, f"{args.period}: {what} {summary.invoices} invoices{where} from {summary.rows} "
         f"CDR rows in {summary.files} files; subtotal {format_amount(summary.subtotal)}, tax "
         f"{format_amount(summary.tax)}, total {format_amount(summary.total)} "
         f"({elapsed:.1f} s)",
         {"period": args.period, "dry_run": args.dry_run, "preview": args.preview,
          "rerun": summary.rerun,
          "out": None if args.dry_run else str(out), "invoices": summary.invoices,
          "rows": summary.rows, "files": summary.files,
          "subtotal": format_amount(summary.subtotal), "tax": format_amount(summary.tax),
          "total": format_amount(summary.total), "seconds": round(elapsed, 3)})
    return 0


def cmd_bill_reconcile(args: argparse.Namespace) -> int:
    from ocs.billing.reconcile import reconcile
    from ocs.billing.run import check_period

    cfg = _config(args)
    check_period(args.period)
    with _stores(cfg) as (store, ledger):
        rec = reconcile(store, cfg.under_data(cfg.cdr.dir), args.period, cfg.billing,
                        ledger=ledger if ledger is not store else None)
    if args.json:
        _print_json({"period": rec.period, "ok": rec.ok, "billed": rec.billed,
                     "differences": rec.differences,
                     "cdr_total": format_amount(rec.cdr_total),
                     "engine_total": format_amount(rec.engine_total),
                     "invoiced_usage": format_amount(rec.invoiced_usage)})
    else:
        for line in rec.differences:
            print(line)
        print(f"{rec.period}: {'reconciled' if rec.ok else f'{len(rec.differences)} differences'}"
              f"; CDR charges {format_amount(rec.cdr_total)}, engine "
              f"{format_amount(rec.engine_total)}, "
              + (f"invoiced postpaid usage {format_amount(rec.invoiced_usage)}" if rec.billed
                 else "not billed yet (CDRs against the balances only)"))
    return 0 if rec.ok else EXIT_FAILURE


def cmd_rerate(args: argparse.Namespace) -> int:
    import re

    from ocs.billing.rerate import Rerater, rerate_store
    from ocs.charging.model import AdjustRequest
    from ocs.charging.plans import PlanCache
    from ocs.fraud.scan import period_bounds

    cfg = _config(args)
    try:
        period_bounds(args.period)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    run_id = args.run_id or f"rerate-{args.period}-{int(time.time())}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", run_id):
        raise CliError(f"--run-id: {run_id!r}: letters, digits, . _ - (at most 64)")
    msisdn = validate_msisdn(args.subscriber) if args.subscriber else ""
    cdr_dir = cfg.under_data(cfg.cdr.dir)
    with _stores(cfg) as (store, ledger):
        book = PlanCache().in_store(ledger)
        plans = None
        if args.plans:
            zones = stored_zone_ids(ledger)
            doc = load_plans_file(args.plans, zones)
            plans = {str(t["id"]): compile_plan(t, known_zones=zones) for t in doc.plans}
        rr = Rerater(args.period, book, plans, zone_of_network=book.zone_of_network,
                     subscriber=msisdn)
        rerate_store(rr, store, cdr_dir)
        res = rr.result
        moved: dict[str, Any] = {}
        if not args.dry_run:
            engine = _engine(cfg, ledger)
            for s in sorted(res.subscribers.values(), key=lambda s: s.msisdn):
                if s.delta:
                    a = engine.adjust_sync(AdjustRequest(msisdn=s.msisdn, amount=s.delta,
                                                         run_id=run_id, period=args.period))
                    moved[s.msisdn] = {"moved": format_amount(a.amount), "capped": a.capped,
                                       "replayed": a.replayed, "record_id": a.record_id,
                                       "refusal": a.refusal or None}
    report = Path(args.report) if args.report else (
        None if args.dry_run else cfg.under_data("rerate") / f"{run_id}.csv")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(res.report_csv())
    subs = sorted(res.subscribers.values(), key=lambda s: s.msisdn)
    out = {"run_id": run_id, "period": args.period, "dry_run": args.dry_run,
           "cdrs": res.cdrs, "subscribers": len(subs),
           "old_total": format_amount(sum(s.old for s in subs)),
           "new_total": format_amount(sum(s.new for s in subs)),
           "delta": format_amount(sum(s.delta for s in subs)),
           "skipped": res.skipped, "report": str(report) if report else None,
           "adjustments": moved,
           "by_subscriber": [{"msisdn": s.msisdn, "cdrs": s.cdrs, "old": format_amount(s.old),
                              "new": format_amount(s.new),
                              "earlier_runs": format_amount(s.earlier_runs),
                              "delta": format_amount(s.delta)} for s in subs]}
    if args.json:
        _print_json(out)
    else:
        _table(f"Re-rating {args.period} ({run_id}{', dry run' if args.dry_run else ''})",
               ["msisdn", "cdrs", "old", "new", "earlier runs", "delta"],
               [[s["msisdn"], s["cdrs"], s["old"], s["new"], s["earlier_runs"], s["delta"]]
                for s in out["by_subscriber"]])
        print(f"{res.cdrs:,} CDRs, {len(subs)} subscribers: old {out['old_total']}, new "
              f"{out['new_total']}, difference {out['delta']}"
              + (f"; not re-rated: {res.skipped}" if res.skipped else "")
              + (f"; report {report}" if report else ""))
    return 0


def cmd_api_token_create(args: argparse.Namespace) -> int:
    from ocs.api.tokens import new_token, op_create

    cfg = _config(args)
    token = new_token()
    with _open(cfg, local=True) as store:
        rec = store.run_write(op_create(token, args.role, name=args.name,
                                        actor=f"cli:{_user()}"))
    _say(args, f"{token}\n(role {rec.role}, id {rec.token_id}; shown once: the store keeps "
         "only its hash)", {"token": token, "token_id": rec.token_id, "role": rec.role,
                            "name": rec.name})
    return 0


def cmd_api_token_list(args: argparse.Namespace) -> int:
    from ocs.api.tokens import tokens

    cfg = _config(args)
    with _open(cfg, local=True) as store:
        items = [{"token_id": t.token_id, "role": t.role, "name": t.name,
                  "created_at": _iso(t.created_at), "created_by": t.created_by}
                 for t in tokens(store)]
    if args.json:
        _print_json(items)
    else:
        _table(f"API tokens ({len(items)})", ["id", "role", "name", "created", "by"],
               [[i["token_id"], i["role"], i["name"], i["created_at"], i["created_by"]]
                for i in items])
    return 0


def cmd_api_token_revoke(args: argparse.Namespace) -> int:
    from ocs.api.tokens import TokenError, op_revoke

    cfg = _config(args)
    with _open(cfg, local=True) as store:
        try:
            rec = store.run_write(op_revoke(args.token_id))
        except TokenError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    _say(args, f"token {rec.token_id} ({rec.role}) revoked",
         {"token_id": rec.token_id, "role": rec.role, "revoked": True})
    return 0


def cmd_charge(args: argparse.Namespace) -> int:
    cfg = _config(args)
    msisdn = validate_msisdn(args.msisdn)
    if args.units <= 0:
        raise CliError("--units must be positive")
    key = f"cli-{msisdn}-{time.time_ns()}".encode()
    with _ledger(cfg) as store:  # (on a cluster, its CDR waits in the outbox for a node)
        res = _engine(cfg, store).debit_sync(DebitRequest(
            request_key=key,
            subscriber=((IdKind.MSISDN, msisdn),),
            service=Service(args.service),
            units=args.units,
            destination=args.destination,
            rating_group=args.rating_group,
            visited_network=args.visited_network,
            protocol="cli",
        ))
    out = {"ok": res.ok, "refusal": res.refusal, "msisdn": msisdn, "service": args.service,
           "units": args.units, "allowance_used": res.allowance_used,
           "charged": format_amount(res.charged), "rate_id": res.rate_id,
           "record_id": res.record_id}
    if args.json:
        _print_json(out)
    elif res.ok:
        print(f"charged {out['charged']} for {args.units} {args.service} units "
              f"(rate {res.rate_id}, {res.allowance_used} from allowance, CDR {res.record_id})")
    if not res.ok:
        if not args.json:
            sys.stderr.write(f"ocs charge: refused: {res.refusal}\n")
        return EXIT_FAILURE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:  # `ocs` alone
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.func is not cmd_serve:
        import logging

        from ocs import logs

        logs.configure("console", level=logging.WARNING)
    try:
        return int(args.func(args))
    except (CliError, ConfigError, PlanError, ProvisioningError, MoneyError,
            CdrFormatError, BillingError) as exc:
        status = exc.status if isinstance(exc, CliError) else EXIT_BAD_INPUT
        sys.stderr.write(f"ocs: error: {exc}\n")
        return status
    except StoreError as exc:
        sys.stderr.write(f"ocs: error: {exc}\n")
        return EXIT_FAILURE
    except OSError as exc:  # a file or directory we need is not usable: one line
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"ocs: error: {where}{exc.strerror or exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
