"""TOML configuration -> frozen dataclasses.

Every key has a default that runs on one machine. An unknown key, a wrong type or an
impossible value raises :class:`ConfigError` naming the file and the key; the CLI turns
it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocs.money import MICRO, MoneyError, parse_amount

DEFAULT_CONFIG = Path("config/ocs.toml")
SEARCH_PATH = (DEFAULT_CONFIG, Path("/etc/ocs/ocs.toml"))
"""Where a config is looked for when neither ``--config`` nor ``$OCS_CONFIG`` names one."""
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration problem, with the file and key in its message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    name: str = "ocs-1"
    data_dir: str = "data"
    currency: str = "EUR"
    home_networks: tuple[str, ...] = ()
    """MCC-MNC codes of the home network; a visited network in this list is not roaming."""
    log_format: str = "auto"
    """auto (console on a TTY, JSON otherwise) | json | console."""
    log_level: str = "info"
    """debug | info | warning | error (``ocs serve --log-level`` overrides)."""
    workers: int = 0
    """Event-loop processes sharing the listeners (SO_REUSEPORT); 0 = one per CPU core."""
    group_readable: bool = False
    """Files and directories the server creates are the owner's only (0600/0700); true
    lets the owner's group read them too (0640/0750), e.g. for a billing or backup user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    nodes: tuple[str, ...] = ("127.0.0.1:7001",)
    """Seed nodes (host:port) of a Redis 7 cluster (cluster-enabled); the rest is found."""
    username: str = ""
    """ACL user ("" = the default user)."""
    password: str = ""
    """requirepass / the ACL user's password (or env:NAME, file:PATH)."""
    wait_replicas: int = 1
    """Replicas that must acknowledge a write (WAIT) before it is answered; 0 = none."""
    wait_timeout_ms: int = 100
    """How long WAIT may take; fewer acknowledgements by then make the answer an error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    backend: str = "lmdb"
    """lmdb (embedded, one node) | redis (a Redis Cluster shared by several nodes)."""
    redis: RedisConfig = field(default_factory=RedisConfig)
    map_size_mb: int = 4096
    commit_max_ops: int = 256
    commit_max_delay_ms: float = 1.0
    queue_size: int = 65536
    answer_retention_s: int = 86400
    """How long stored answers are kept for idempotent replay."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingConfig:
    default_data_grant_bytes: int = 10_000_000
    default_voice_grant_s: int = 300
    default_validity_s: int = 900
    reaper_interval_s: float = 5.0
    max_usage_bytes: int = 100_000_000_000
    """Plausibility limit of one usage report (Diameter USU, RADIUS interim delta, ...):
    above it Diameter gets 5004 and nothing is charged; RADIUS is answered and the excess
    is acknowledged, counted and logged, never charged."""
    max_usage_seconds: int = 7 * 86400
    max_usage_events: int = 10_000
    """Messages / service-specific units in one report or event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiameterConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:3868"
    origin_host: str = "ocs.localdomain"
    origin_realm: str = "localdomain"
    allowed_peers: tuple[str, ...] = ()
    relay_peers: tuple[str, ...] = ()
    """Peers (Origin-Host of their CER) that may forward other hosts' requests (with
    Route-Record), e.g. your DRAs; empty = any peer may. A direct peer's requests must
    carry its own Origin-Host."""
    watchdog_s: float = 30.0
    tx_timeout_s: float = 10.0
    default_validity_s: int = 900
    """Validity-Time of a grant; the session supervision timer Tcc is twice this."""
    dedup_window_s: float = 240.0
    """How long answers are kept for duplicate requests (RFC 6733: at least 4 minutes)."""
    max_pending_per_peer: int = 4096
    """Requests in flight per connection; beyond this the answer is 3004 TOO_BUSY."""
    max_connections: int = 1024
    """Connections per worker process; beyond this a new one is closed at once."""
    cer_timeout_s: float = 10.0
    """A connection must send its CER within this long of opening (traffic does not extend
    it); before the CER a message may have at most 16 KiB."""
    max_message_bytes: int = 1 << 20
    """Largest message accepted from an open peer; a larger one closes the connection."""
    write_buffer_kb: int = 1024
    """Answers waiting for a peer that does not read: above this we stop reading its
    requests ..."""
    write_stall_s: float = 30.0
    """... and close the connection if it stays above for this long."""
    quota_threshold_percent: int = 20
    """Volume/Time-Quota-Threshold as a percentage of each grant (0 = not sent)."""
    quota_holding_s: int = 0
    """Quota-Holding-Time sent with grants (0 = not sent)."""
    final_unit_action: str = "terminate"
    """terminate | redirect: what the gateway does when the last units are used."""
    redirect_url: str = ""
    """Top-up portal for final_unit_action = "redirect"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RadiusClient:
    address: str
    secret: str
    name: str = ""
    coa_address: str = ""
    coa_port: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RadiusConfig:
    enabled: bool = True
    auth_listen: str = "127.0.0.1:1812"
    acct_listen: str = "127.0.0.1:1813"
    coa_port: int = 3799
    require_message_authenticator: bool = True
    clients: tuple[RadiusClient, ...] = ()
    rating_group: int = -1
    """Rating group RADIUS data sessions are rated under; -1 = none (rates without
    rating_groups apply)."""
    interim_interval_s: int = 300
    """Acct-Interim-Interval sent in Access-Accept."""
    session_timeout_s: int = 3600
    """Session-Timeout in Access-Accept for prepaid data (re-authorise at least this often)."""
    dedup_window_s: float = 30.0
    """How long a reply is kept to answer a retransmission (same client, Id, authenticator)."""
    dae_queue_limit: int = 1024
    """Disconnect/CoA requests that may wait per NAS while all 256 Identifiers are in
    flight; beyond this they are dropped and counted (retried by the next sweep)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SmppAccount:
    system_id: str
    password: str
    max_binds: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class SmppRoute:
    prefix: str
    system_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SmppConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:2775"
    window: int = 64
    throttle_per_s: int = 0
    enquire_link_s: float = 30.0
    """Send enquire_link after this long without traffic on a bind."""
    response_timeout_s: float = 10.0
    """Close the bind when our enquire_link is not answered within this."""
    bind_timeout_s: float = 30.0
    """Close a connection that has not bound within this."""
    default_validity_s: int = 86400
    """How long a message waits for its destination when the submit sets no validity."""
    refund_expired: bool = True
    """Refund the sender when a message expires undelivered."""
    accounts: tuple[SmppAccount, ...] = ()
    routes: tuple[SmppRoute, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SnmpV3User:
    name: str
    auth_protocol: str = "SHA"
    auth_key: str = ""
    priv_protocol: str = "AES"
    priv_key: str = ""
    engine_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnmpConfig:
    enabled: bool = True
    trap_listen: str = "127.0.0.1:1162"
    communities: tuple[str, ...] = ("public",)
    engine_id: str = ""
    """Our SNMPv3 engine ID in hex (authoritative for INFORMs); empty = derived from
    node.name."""
    v3_users: tuple[SnmpV3User, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CdrConfig:
    dir: str = "cdr"
    rotate_s: int = 300
    rotate_records: int = 100_000
    export_interval_s: float = 1.0
    min_free_mb: int = 64
    """Below this much free space for CDR files: a critical alarm, and new charging is
    refused ("unable to comply") until there is room again (0 = never)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrapMapping:
    """An enterprise notification and what it means as an alarm."""

    oid: str
    alarm_type: str = "other"
    probable_cause: str = "other"
    severity: str = "major"
    clear_oid: str = ""
    """The notification that clears it (same element and resource)."""
    resource_varbind: str = ""
    """OID prefix of the varbind naming the resource (its value, e.g. a port index);
    empty = the whole device."""
    text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NocHook:
    """Run a command or POST a webhook for alarm events of these severities."""

    severities: tuple[str, ...] = ("critical", "major")
    command: str = ""
    """Run with the event as JSON on stdin (no shell)."""
    url: str = ""
    """POST the event as JSON."""
    retries: int = 3
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NocConfig:
    stream_dir: str = "alarms"
    rotate_s: int = 300
    rotate_records: int = 100_000
    health_interval_s: float = 10.0
    min_free_disk_mb: int = 1024
    """Raise an environmentalAlarm when the data directory's disk has less free."""
    max_commit_ms: float = 200.0
    """Raise a qualityOfServiceAlarm when a group commit took longer."""
    max_error_rate: float = 0.05
    """Raise a processingErrorAlarm when more than this share of charging operations
    failed (busy, writer or store errors) in a health interval."""
    storm_rate: int = 500
    """Traps per second from one source address that start storm control (0 = off): its
    notifications are counted under one summary alarm instead of processed one by one."""
    storm_hold_s: float = 30.0
    """Storm control ends after this long below the rate; the summary alarm clears."""
    history_days: int = 90
    """Cleared alarms are deleted this long after they cleared (0 = keep for ever)."""
    max_alarms_per_element: int = 1000
    """Active alarms one element may have; further raises are counted on one summary
    alarm (resource ``active-alarm-limit``) until it is below again (0 = no cap)."""
    max_active_alarms: int = 100_000
    """Active alarms over all elements, likewise (summary alarm on element ``*``)."""
    indeterminate_expire_s: int = 86400
    """An active indeterminate alarm (an unmapped trap: nothing will clear it) not
    repeated for this long clears itself (0 = never)."""
    traps: tuple[TrapMapping, ...] = ()
    hooks: tuple[NocHook, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaxRule:
    name: str
    rate: str
    """Decimal fraction as a string, e.g. "0.081" for 8.1 %."""
    prefix: str = ""
    """MSISDN prefix (country code) of the jurisdiction; "" = everyone else."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Discount:
    description: str
    percent: str
    """Decimal string, e.g. "10" for 10 %."""
    plan: str = ""
    """Plan id it applies to; "" = every plan."""
    applies_to: str = "fee"
    """fee | usage | all"""


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingConfig:
    invoice_dir: str = "invoices"
    due_days: int = 30
    issuer_name: str = ""
    """Who issues the invoices (the operator), its address (lines separated by
    newlines) and tax id, printed on every invoice."""
    issuer_address: str = ""
    issuer_tax_id: str = ""
    taxes: tuple[TaxRule, ...] = ()
    discounts: tuple[Discount, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FraudWeights:
    high_risk_prefix: int = 40
    night_usage: int = 20
    long_call: int = 40
    roaming_disabled: int = 40
    high_risk_network: int = 60
    sim_box: int = 100
    velocity: int = 60
    distant_sessions: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class FraudConfig:
    enabled: bool = True
    high_risk_prefixes: tuple[str, ...] = ()
    """Destination prefixes whose first use is an indicator (premium, satellite, ...)."""
    high_risk_networks: tuple[str, ...] = ()
    """Visited MCC-MNCs that are an indicator."""
    long_call_s: int = 14400
    night_start: int = 0
    night_end: int = 6
    """Night = local hours [night_start, night_end) in the plan's time zone."""
    sim_box_calls_per_hour: int = 30
    sim_box_max_avg_s: int = 60
    velocity_factor: float = 10.0
    velocity_min_amount: str = "5.00"
    review_score: int = 40
    block_score: int = 100
    weights: FraudWeights = field(default_factory=FraudWeights)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChfConfig:
    listen: str = ""
    """Nchf over h2c (prior knowledge) and HTTP/1.1, e.g. "127.0.0.1:8086"; "" = off."""
    tls_cert: str = ""
    tls_key: str = ""
    """Both set: HTTPS with ALPN h2 (and http/1.1) instead of cleartext."""
    quota_threshold_percent: int = 20
    """volumeQuotaThreshold as a share of each grant (0 = none)."""
    max_connections: int = 1024
    max_streams: int = 128
    """HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection."""
    max_body_kb: int = 64
    request_timeout_s: float = 10.0
    """A request must arrive whole within this (slow senders are closed)."""
    idle_timeout_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True, slots=True, kw_only=True)
class NmsElement:
    id: str
    address: str
    """HOST:PORT of its SNMP agent."""
    type: str = "router"
    community: str = "public"
    v3_user: str = ""
    """Instead of the community: a ``[[snmp.v3_users]]`` name."""
    capacity_mbps: int = 0
    """Capacity for utilisation %; 0 = each interface's ifHighSpeed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NmsThresholds:
    cpu_pct: float = 90.0
    memory_pct: float = 90.0
    capacity_pct: float = 85.0
    packet_loss_pct: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NmsRemediation:
    alarm_type: str
    action: str
    command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NmsConfig:
    poll_interval_s: float = 60.0
    history_days: int = 7
    timeout_s: float = 2.0
    """Per SNMP request (then ``retries`` more tries)."""
    retries: int = 1
    max_concurrent: int = 32
    """Elements polled at once at most."""
    elements: tuple[NmsElement, ...] = ()
    thresholds: NmsThresholds = field(default_factory=NmsThresholds)
    remediations: tuple[NmsRemediation, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.elements)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9100"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    listen: str = ""
    """The REST API under /api/v1 (and the portal at /), e.g. "127.0.0.1:8088"; "" = off."""
    max_page: int = 500
    """At most this many subscribers per page of GET /api/v1/subscribers."""
    max_body_kb: int = 64
    request_timeout_s: float = 10.0
    """A request must arrive whole within this (slow senders are closed)."""

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: str = "<defaults>"
    node: NodeConfig = field(default_factory=NodeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    charging: ChargingConfig = field(default_factory=ChargingConfig)
    diameter: DiameterConfig | None = None
    radius: RadiusConfig | None = None
    smpp: SmppConfig | None = None
    snmp: SnmpConfig | None = None
    chf: ChfConfig | None = None
    api: ApiConfig | None = None
    nms: NmsConfig | None = None
    cdr: CdrConfig = field(default_factory=CdrConfig)
    noc: NocConfig = field(default_factory=NocConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    fraud: FraudConfig = field(default_factory=FraudConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir)

    def under_data(self, rel: str) -> Path:
        """Resolve a configured path: relative paths are under ``data_dir``."""
        p = Path(rel)
        return p if p.is_absolute() else self.data_dir / p

    def with_data_dir(self, data_dir: str) -> Config:
        return dataclasses.replace(self, node=dataclasses.replace(self.node, data_dir=data_dir))


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeConfig,
    "store": StoreConfig,
    "charging": ChargingConfig,
    "diameter": DiameterConfig,
    "radius": RadiusConfig,
    "smpp": SmppConfig,
    "snmp": SnmpConfig,
    "chf": ChfConfig,
    "api": ApiConfig,
    "nms": NmsConfig,
    "cdr": CdrConfig,
    "noc": NocConfig,
    "billing": BillingConfig,
    "fraud": FraudConfig,
    "admin": AdminConfig,
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return the frozen form."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], where)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


SECRETS = {"RedisConfig": ("password",), "RadiusClient": ("secret",), "SmppAccount": ("password",),
           "SnmpV3User": ("auth_key", "priv_key"), "NocHook": ("url",),
           "NmsElement": ("community",)}
"""Keys that may name where their value is instead of holding it: ``env:NAME`` (an
environment variable) or ``file:PATH`` (a file's content, trailing newline dropped)."""


def _secret(value: str, where: str) -> str:
    if value.startswith("env:"):
        name = value[4:]
        got = os.environ.get(name)
        if not name or got is None:
            raise ConfigError(f"{where}: environment variable {name!r} is not set")
        return got
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return value


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    secrets = SECRETS.get(cls.__name__, ())
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
        if key in secrets:
            kwargs[key] = _secret(kwargs[key], f"{where}.{key}")
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required key is missing")
    return cls(**kwargs)


def _check_store(store: StoreConfig, src: str) -> None:
    if store.backend not in ("lmdb", "redis"):
        raise ConfigError(f"{src}: store.backend: lmdb or redis, got {store.backend!r}")
    r = store.redis
    if not r.nodes:
        raise ConfigError(f"{src}: store.redis.nodes: at least one host:port")
    for i, node in enumerate(r.nodes):
        host, sep, port = node.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{src}: store.redis.nodes[{i}]: host:port, got {node!r}")
    if r.wait_replicas < 0:
        raise ConfigError(f"{src}: store.redis.wait_replicas: must be >= 0")
    if not 0 < r.wait_timeout_ms <= 60_000:
        raise ConfigError(f"{src}: store.redis.wait_timeout_ms: must be within 1..60000")


def _check_listen(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: port must be 0-65535, got {port!r}")


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _validate(cfg: Config) -> None:
    """Cross-check values that types alone cannot catch."""
    src = cfg.source
    if not cfg.node.name or any(c in cfg.node.name for c in "/\\ _"):
        raise ConfigError(f"{src}: node.name: must be non-empty without '/', '_' or spaces")
    if len(cfg.node.currency) != 3 or not cfg.node.currency.isalpha():
        raise ConfigError(f"{src}: node.currency: expected a 3-letter ISO 4217 code")
    if not 0 <= cfg.node.workers <= 64:
        raise ConfigError(f"{src}: node.workers: expected 0 (one per core) to 64")
    if cfg.node.log_format not in ("auto", "json", "console"):
        raise ConfigError(f"{src}: node.log_format: expected auto, json or console")
    if cfg.node.log_level not in LOG_LEVELS:
        raise ConfigError(f"{src}: node.log_level: expected {', '.join(LOG_LEVELS)}")
    for n in cfg.node.home_networks:
        if not (n.isascii() and n.isdigit() and len(n) in (5, 6)):
            raise ConfigError(f"{src}: node.home_networks: {n!r} is not an MCC-MNC")
    positive = {
        "store.map_size_mb": cfg.store.map_size_mb,
        "store.commit_max_ops": cfg.store.commit_max_ops,
        "store.queue_size": cfg.store.queue_size,
        "store.answer_retention_s": cfg.store.answer_retention_s,
        "cdr.rotate_s": cfg.cdr.rotate_s,
        "cdr.rotate_records": cfg.cdr.rotate_records,
        "charging.default_data_grant_bytes": cfg.charging.default_data_grant_bytes,
        "charging.default_voice_grant_s": cfg.charging.default_voice_grant_s,
        "charging.default_validity_s": cfg.charging.default_validity_s,
        "charging.max_usage_bytes": cfg.charging.max_usage_bytes,
        "charging.max_usage_seconds": cfg.charging.max_usage_seconds,
        "charging.max_usage_events": cfg.charging.max_usage_events,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{src}: {key}: must be positive, got {v}")
    if not 0 <= cfg.store.commit_max_delay_ms <= 1000:
        raise ConfigError(f"{src}: store.commit_max_delay_ms: must be within 0..1000")
    _check_store(cfg.store, src)
    if cfg.cdr.export_interval_s <= 0 or cfg.charging.reaper_interval_s <= 0:
        raise ConfigError(f"{src}: intervals must be positive")
    if cfg.billing.due_days < 0:
        raise ConfigError(f"{src}: billing.due_days: must be >= 0")
    for i, t in enumerate(cfg.billing.taxes):
        try:
            rate = parse_amount(t.rate, field="rate")
        except MoneyError as exc:
            raise ConfigError(f"{src}: billing.taxes[{i}].rate: {exc}") from exc
        if rate > MICRO:
            raise ConfigError(f"{src}: billing.taxes[{i}].rate: a fraction, at most 1")
        if t.prefix and not (t.prefix.isascii() and t.prefix.isdigit()):
            raise ConfigError(f"{src}: billing.taxes[{i}].prefix: expected digits")
    for i, d in enumerate(cfg.billing.discounts):
        try:
            pct = parse_amount(d.percent, field="percent")
        except MoneyError as exc:
            raise ConfigError(f"{src}: billing.discounts[{i}].percent: {exc}") from exc
        if pct > 100 * MICRO:
            raise ConfigError(f"{src}: billing.discounts[{i}].percent: at most 100")
        if d.applies_to not in ("fee", "usage", "all"):
            raise ConfigError(f"{src}: billing.discounts[{i}].applies_to: fee, usage or all")
    if cfg.admin.enabled:
        _check_listen(cfg.admin.listen, f"{src}: admin.listen")
    if cfg.diameter is not None:
        dm = cfg.diameter
        _check_listen(dm.listen, f"{src}: diameter.listen")
        if not dm.origin_host or not dm.origin_realm:
            raise ConfigError(f"{src}: diameter: origin_host and origin_realm must be set")
        if dm.final_unit_action not in ("terminate", "redirect"):
            raise ConfigError(f"{src}: diameter.final_unit_action: terminate or redirect")
        if dm.final_unit_action == "redirect" and not dm.redirect_url:
            raise ConfigError(f"{src}: diameter.redirect_url: needed for redirect")
        if not 0 <= dm.quota_threshold_percent < 100:
            raise ConfigError(f"{src}: diameter.quota_threshold_percent: 0..99")
        if not 4096 <= dm.max_message_bytes <= 0xFFFFFF:
            raise ConfigError(f"{src}: diameter.max_message_bytes: 4096..16777215")
        for key in ("watchdog_s", "tx_timeout_s", "default_validity_s", "max_pending_per_peer",
                    "max_connections", "cer_timeout_s", "write_buffer_kb", "write_stall_s"):
            if getattr(dm, key) <= 0:
                raise ConfigError(f"{src}: diameter.{key}: must be positive")
        if dm.dedup_window_s < 0 or dm.quota_holding_s < 0:
            raise ConfigError(f"{src}: diameter: dedup_window_s and quota_holding_s must be >= 0")
    if cfg.radius is not None:
        _check_listen(cfg.radius.auth_listen, f"{src}: radius.auth_listen")
        _check_listen(cfg.radius.acct_listen, f"{src}: radius.acct_listen")
        names: set[str] = set()
        for i, c in enumerate(cfg.radius.clients):
            name = c.name or c.address
            if name in names:
                raise ConfigError(f"{src}: radius.clients[{i}].name: {name!r} is used twice "
                                  "(sessions belong to the client that sent them)")
            names.add(name)
            try:
                ipaddress.ip_network(c.address, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{src}: radius.clients[{i}].address: {exc}") from exc
            if not c.secret:
                raise ConfigError(f"{src}: radius.clients[{i}].secret: must not be empty")
        if cfg.radius.dae_queue_limit < 0:
            raise ConfigError(f"{src}: radius.dae_queue_limit: must be >= 0")
        if cfg.radius.interim_interval_s <= 0 or cfg.radius.session_timeout_s <= 0:
            raise ConfigError(f"{src}: radius: interim_interval_s and session_timeout_s "
                              "must be positive")
    if cfg.smpp is not None:
        _check_listen(cfg.smpp.listen, f"{src}: smpp.listen")
        if cfg.smpp.window <= 0:
            raise ConfigError(f"{src}: smpp.window: must be positive")
        if cfg.smpp.throttle_per_s < 0:
            raise ConfigError(f"{src}: smpp.throttle_per_s: must be >= 0")
        for key in ("enquire_link_s", "response_timeout_s", "bind_timeout_s"):
            if getattr(cfg.smpp, key) <= 0:
                raise ConfigError(f"{src}: smpp.{key}: must be positive")
        ids = {a.system_id for a in cfg.smpp.accounts}
        for i, r in enumerate(cfg.smpp.routes):
            if r.system_id not in ids:
                raise ConfigError(
                    f"{src}: smpp.routes[{i}].system_id: {r.system_id!r} is no smpp.accounts entry"
                )
    if cfg.chf is not None and cfg.chf.listen:
        ch = cfg.chf
        _check_listen(ch.listen, f"{src}: chf.listen")
        if bool(ch.tls_cert) != bool(ch.tls_key):
            raise ConfigError(f"{src}: chf: set both tls_cert and tls_key, or neither")
        if not 0 <= ch.quota_threshold_percent < 100:
            raise ConfigError(f"{src}: chf.quota_threshold_percent: 0..99")
        for key in ("max_connections", "max_streams", "max_body_kb", "request_timeout_s",
                    "idle_timeout_s"):
            if getattr(ch, key) <= 0:
                raise ConfigError(f"{src}: chf.{key}: must be positive")
    if cfg.api is not None and cfg.api.listen:
        _check_listen(cfg.api.listen, f"{src}: api.listen")
        for key in ("max_page", "max_body_kb", "request_timeout_s"):
            if getattr(cfg.api, key) <= 0:
                raise ConfigError(f"{src}: api.{key}: must be positive")
    if cfg.nms is not None:
        _check_nms(cfg, src)
    if cfg.snmp is not None:
        _check_listen(cfg.snmp.trap_listen, f"{src}: snmp.trap_listen")
        _check_usm(cfg.snmp, src)
    _check_noc(cfg.noc, src)
    f = cfg.fraud
    try:
        parse_amount(f.velocity_min_amount, field="velocity_min_amount")
    except MoneyError as exc:
        raise ConfigError(f"{src}: fraud.velocity_min_amount: {exc}") from exc
    if not (0 <= f.night_start <= 24 and 0 <= f.night_end <= 24):
        raise ConfigError(f"{src}: fraud: night_start and night_end are hours 0..24")
    if not 0 < f.review_score <= f.block_score:
        raise ConfigError(f"{src}: fraud: 0 < review_score <= block_score")
    for p in f.high_risk_prefixes:
        if not (p.isascii() and p.isdigit()):
            raise ConfigError(f"{src}: fraud.high_risk_prefixes: {p!r} is not digits")


_SEVERITIES = {"critical", "major", "minor", "warning", "indeterminate"}
_ALARM_TYPES = {
    "other", "communicationsAlarm", "qualityOfServiceAlarm", "processingErrorAlarm",
    "equipmentAlarm", "environmentalAlarm", "integrityViolation", "operationalViolation",
    "physicalViolation", "securityServiceOrMechanismViolation", "timeDomainViolation"}


def _is_oid(text: str) -> bool:
    parts = text.strip(".").split(".")
    return len(parts) >= 2 and all(p.isascii() and p.isdigit() for p in parts)


def _check_noc(noc: NocConfig, src: str) -> None:
    if min(noc.max_alarms_per_element, noc.max_active_alarms,
           noc.indeterminate_expire_s) < 0:
        raise ConfigError(f"{src}: noc: max_alarms_per_element, max_active_alarms and "
                          "indeterminate_expire_s must be >= 0")
    if noc.storm_rate < 0 or noc.storm_hold_s <= 0 or noc.history_days < 0:
        raise ConfigError(f"{src}: noc: storm_rate and history_days must be >= 0, "
                          "storm_hold_s > 0")
    if not 0 < noc.max_error_rate <= 1:
        raise ConfigError(f"{src}: noc.max_error_rate: a share between 0 and 1")
    seen: set[str] = set()
    for i, t in enumerate(noc.traps):
        where = f"{src}: noc.traps[{i}]"
        for key in ("oid", "clear_oid", "resource_varbind"):
            value = getattr(t, key)
            if (value or key == "oid") and not _is_oid(value):
                raise ConfigError(f"{where}.{key}: expected a dotted OID")
        if t.alarm_type not in _ALARM_TYPES:
            raise ConfigError(f"{where}.alarm_type: one of {', '.join(sorted(_ALARM_TYPES))}")
        if t.severity not in _SEVERITIES:
            raise ConfigError(f"{where}.severity: one of {', '.join(sorted(_SEVERITIES))}")
        for oid in (t.oid, t.clear_oid):
            if oid and oid in seen:
                raise ConfigError(f"{where}: OID {oid} is mapped twice")
            seen.add(oid)
    for i, h in enumerate(noc.hooks):
        where = f"{src}: noc.hooks[{i}]"
        if bool(h.command) == bool(h.url):
            raise ConfigError(f"{where}: set exactly one of command and url")
        if h.url and not h.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: http:// or https://")
        bad = [x for x in h.severities if x not in _SEVERITIES | {"cleared"}]
        if bad or not h.severities:
            raise ConfigError(f"{where}.severities: from {', '.join(sorted(_SEVERITIES))}, "
                              "cleared")
        if h.retries < 0 or h.timeout_s <= 0:
            raise ConfigError(f"{where}: retries >= 0 and timeout_s > 0")


def _check_nms(cfg: Config, src: str) -> None:
    nms = cfg.nms
    assert nms is not None
    if nms.poll_interval_s <= 0 or nms.timeout_s <= 0 or nms.max_concurrent <= 0:
        raise ConfigError(f"{src}: nms: poll_interval_s, timeout_s and max_concurrent must "
                          "be positive")
    if nms.retries < 0 or nms.history_days < 0:
        raise ConfigError(f"{src}: nms: retries and history_days must be >= 0")
    users = {u.name for u in cfg.snmp.v3_users} if cfg.snmp is not None else set()
    seen: set[str] = set()
    for i, e in enumerate(nms.elements):
        where = f"{src}: nms.elements[{i}]"
        if not e.id or e.id in seen:
            raise ConfigError(f"{where}.id: empty or used twice")
        seen.add(e.id)
        _check_listen(e.address, f"{where}.address")
        if e.v3_user and e.v3_user not in users:
            raise ConfigError(f"{where}.v3_user: {e.v3_user!r} is no snmp.v3_users entry")
        if e.capacity_mbps < 0:
            raise ConfigError(f"{where}.capacity_mbps: must be >= 0")
    t = nms.thresholds
    for key in ("cpu_pct", "memory_pct", "capacity_pct", "packet_loss_pct"):
        if not 0 < getattr(t, key) <= 100:
            raise ConfigError(f"{src}: nms.thresholds.{key}: a percentage above 0, at most 100")
    for i, r in enumerate(nms.remediations):
        if r.action not in ("set_admin_up", "exec"):
            raise ConfigError(f"{src}: nms.remediations[{i}].action: set_admin_up or exec")
        if (r.action == "exec") != bool(r.command):
            raise ConfigError(f"{src}: nms.remediations[{i}].command: needed by exec "
                              "(only)")


def _check_usm(snmp: SnmpConfig, src: str) -> None:
    auths = {"", "NONE", "MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"}
    privs = {"", "NONE", "DES", "AES", "AES128", "AES192", "AES256"}
    hexes = [("snmp.engine_id", snmp.engine_id)]
    for i, u in enumerate(snmp.v3_users):
        where = f"{src}: snmp.v3_users[{i}]"
        if not u.name:
            raise ConfigError(f"{where}.name: must not be empty")
        if u.auth_protocol.upper().replace("-", "") not in auths:
            raise ConfigError(f"{where}.auth_protocol: one of MD5, SHA, SHA224..SHA512")
        if u.priv_protocol.upper().replace("-", "") not in privs:
            raise ConfigError(f"{where}.priv_protocol: one of DES, AES, AES192, AES256")
        for key in ("auth_key", "priv_key"):
            value = getattr(u, key)
            if value and len(value) < 8:
                raise ConfigError(f"{where}.{key}: at least 8 characters (RFC 3414)")
        hexes.append((f"snmp.v3_users[{i}].engine_id", u.engine_id))
    for where, value in hexes:
        if value:
            try:
                raw = bytes.fromhex(value.removeprefix("0x"))
            except ValueError:
                raise ConfigError(f"{src}: {where}: expected hex digits") from None
            if not 5 <= len(raw) <= 32:
                raise ConfigError(f"{src}: {where}: an engine ID has 5 to 32 octets")


def find_config(path: str | Path | None = None) -> Path:
    """The config file to use: ``path`` (``--config``), else ``$OCS_CONFIG``, else the
    first of ./config/ocs.toml and /etc/ocs/ocs.toml that exists; ConfigError when there
    is none (built-in defaults would point every command at a store that is not there)."""
    if path is not None:
        return Path(path)
    env = os.environ.get("OCS_CONFIG", "")
    if env:
        return Path(env)
    for candidate in SEARCH_PATH:
        if candidate.exists():
            return candidate
    raise ConfigError("no config file: give --config PATH or set OCS_CONFIG, or create "
                      + " or ".join(str(p) for p in SEARCH_PATH))


def load_config(path: str | Path | None = None, *, data_dir: str | None = None,
                defaults: bool = False) -> Config:
    """Load and validate the config file :func:`find_config` names (``defaults``: the
    built-in defaults instead, when there is none)."""
    try:
        found: Path | None = find_config(path)
    except ConfigError:
        if not defaults:
            raise
        found = None
    path = found
    if path is None:
        cfg = Config()
    else:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
        kwargs: dict[str, Any] = {"source": str(p)}
        for key, value in raw.items():
            cls = _SECTIONS.get(key)
            if cls is None:
                raise ConfigError(f"{p}: {key}: unknown section")
            if not isinstance(value, dict):
                raise ConfigError(f"{p}: {key}: expected a table")
            kwargs[key] = _build(cls, value, f"{p}: {key}")
        cfg = Config(**kwargs)
    if data_dir is not None:
        cfg = cfg.with_data_dir(data_dir)
    _validate(cfg)
    return cfg


RELOADABLE = frozenset({
    "node.log_level", "node.home_networks",
    "charging.default_data_grant_bytes", "charging.default_voice_grant_s",
    "charging.max_usage_bytes", "charging.max_usage_seconds", "charging.max_usage_events",
    *(f"fraud.{f.name}" for f in dataclasses.fields(FraudConfig)),
    "noc.health_interval_s", "noc.min_free_disk_mb", "noc.max_commit_ms",
    "noc.max_error_rate", "noc.storm_rate", "noc.storm_hold_s", "noc.traps",
    "noc.max_alarms_per_element", "noc.max_active_alarms", "snmp.v3_users",
    "radius.clients", "radius.require_message_authenticator", "radius.interim_interval_s",
    "radius.session_timeout_s", "radius.dae_queue_limit",
    "smpp.accounts", "smpp.routes", "smpp.throttle_per_s",
    "snmp.communities", "nms.poll_interval_s", "nms.elements", "nms.thresholds",
    "nms.remediations",
    "nms.timeout_s", "nms.retries",
    "diameter.allowed_peers", "diameter.relay_peers",
    "billing.taxes", "billing.discounts", "billing.due_days", "billing.invoice_dir",
})
"""Keys a running server takes on SIGHUP (billing's are read by ``ocs bill`` anyway);
every other change needs a restart."""


def config_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(changed keys a reload applies, changed keys that need a restart), as
    ``section.key``; a section turned on or off is ``section``."""
    applied: list[str] = []
    restart: list[str] = []
    for section in _SECTIONS:
        a, b = getattr(old, section), getattr(new, section)
        if (a is None) != (b is None):
            restart.append(section)
            continue
        if a is None or a == b:
            continue
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                key = f"{section}.{f.name}"
                (applied if key in RELOADABLE else restart).append(key)
    return applied, restart


def with_reloaded(old: Config, new: Config, keys: list[str]) -> Config:
    """``old`` with the values of ``keys`` (``section.key``) taken from ``new``."""
    sections: dict[str, Any] = {}
    for key in keys:
        section, name = key.split(".", 1)
        current = sections.get(section, getattr(old, section))
        sections[section] = dataclasses.replace(current, **{name: getattr(
            getattr(new, section), name)})
    return dataclasses.replace(old, **sections)
