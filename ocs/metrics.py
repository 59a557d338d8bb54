"""Prometheus counters and gauges served on the admin /metrics endpoint.

With several workers (``ocs serve --workers N``) ``ocs serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before this module is first imported: every process then
keeps its values in a memory-mapped file there, and /metrics (worker 0) adds them up
(prometheus_client's multiprocess mode). Gauges say how: ``livesum`` over the running
workers, or ``max`` for figures only worker 0 sets.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

REGISTRY = CollectorRegistry(auto_describe=True)
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def exposition_registry() -> CollectorRegistry:
    """The registry /metrics renders: every worker's values when there are several."""
    if not MULTIPROCESS_DIR:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return registry


def process_ended(pid: int) -> None:
    """Drop a finished worker's live gauges (its counters keep counting in the sums)."""
    if MULTIPROCESS_DIR:
        multiprocess.mark_process_dead(pid, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]


STORE_BATCHES = Counter("ocs_store_batches", "Group-commit batches committed", registry=REGISTRY)
STORE_OPS = Counter("ocs_store_ops", "Operations committed through the writer",
                    registry=REGISTRY)
STORE_COMMIT_SECONDS = Histogram(
    "ocs_store_commit_seconds",
    "Time to commit (fsync) one batch",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
    registry=REGISTRY,
)
STORE_BATCH_OPS = Histogram(
    "ocs_store_batch_ops",
    "Operations per committed batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
STORE_QUEUE = Gauge("ocs_store_queue_depth", "Operations waiting for the writer",
                    registry=REGISTRY, multiprocess_mode="livesum")
STORE_SIZE = Gauge("ocs_store_file_bytes", "Size of the LMDB file", registry=REGISTRY,
                   multiprocess_mode="max")
CHARGING_OPS = Counter("ocs_charging_operations", "Charging operations by kind and outcome",
                       ["op", "outcome"], registry=REGISTRY)
REDIS_EXCHANGES = Counter("ocs_redis_exchanges", "Exchanges with the Redis Cluster "
                          "(store.backend = redis: a pipelined batch counts once)",
                          registry=REGISTRY)
REDIS_WRITE_BATCHES = Counter("ocs_redis_write_batches", "Batches of writes sent to a Redis "
                              "primary, each followed by one WAIT", registry=REGISTRY)
REDIS_CONFLICTS = Counter("ocs_redis_conflicts", "Operations run again because another node "
                          "wrote a record they read", registry=REGISTRY)
RESERVATIONS_EXPIRED = Counter("ocs_reservations_expired",
                               "Reservations settled by the reaper", registry=REGISTRY)
CDR_PENDING = Gauge("ocs_cdr_pending", "CDRs committed but not yet written to a file",
                    registry=REGISTRY, multiprocess_mode="max")
CDR_JOURNAL = Gauge("ocs_cdr_journal_records",
                    "CDRs in the journal (including the open file's, until it closes)",
                    registry=REGISTRY, multiprocess_mode="max")


def on_batch(ops: int, commit_s: float, _batch_s: float) -> None:
    STORE_BATCHES.inc()
    STORE_OPS.inc(ops)
    STORE_COMMIT_SECONDS.observe(commit_s)
    STORE_BATCH_OPS.observe(ops)

RADIUS_PACKETS = Counter("ocs_radius_packets", "RADIUS requests by endpoint and outcome",
                         ["endpoint", "outcome"], registry=REGISTRY)
AUTH_FAILURES = Counter("ocs_auth_failures", "Failed authentications by protocol and "
                        "reason (bad_credentials; throttled: refused unchecked while held off)",
                        ["protocol", "reason"], registry=REGISTRY)
RADIUS_ACCESS = Counter("ocs_radius_access", "Access-Requests answered, by result (accept, "
                        "reject, challenge)", ["result"], registry=REGISTRY)
SMPP_BINDS = Counter("ocs_smpp_binds", "SMPP bind requests by outcome (ok, bad_credentials, "
                     "bind_limit)", ["outcome"], registry=REGISTRY)
SMPP_SUBMITS = Counter("ocs_smpp_submits", "submit_sm / data_sm answered, by command_status "
                       "(ESME_ROK, ESME_RSUBMITFAIL, ...)", ["status"], registry=REGISTRY)
SMPP_DELIVERIES = Counter("ocs_smpp_deliveries", "Delivery attempts by outcome (delivered, "
                          "retry, expire)", ["outcome"], registry=REGISTRY)
SMPP_QUEUE = Gauge("ocs_smpp_queue_depth", "SMS messages waiting for delivery (due now or "
                   "later)", registry=REGISTRY, multiprocess_mode="max")
REQUEST_SECONDS = Histogram(
    "ocs_request_seconds", "Time from a request's arrival to its answer, by protocol",
    ["protocol"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
BUILD_INFO = Gauge("ocs_build_info", "The running build (value 1)", ["version", "python"],
                   registry=REGISTRY, multiprocess_mode="max")
RADIUS_SUSPECT = Counter("ocs_radius_suspect", "RADIUS accounting answered but suspect, by "
                         "reason (nas_ip_mismatch, ended_session_report, implausible_usage)",
                         ["reason"], registry=REGISTRY)
RADIUS_DAE = Counter("ocs_radius_dae", "Disconnect/CoA requests by kind and outcome "
                     "(dropped: the NAS's queue was full)", ["kind", "outcome"],
                     registry=REGISTRY)
RADIUS_DROPPED = Counter("ocs_radius_dropped", "RADIUS packets silently discarded, by reason",
                         ["endpoint", "reason"], registry=REGISTRY)

SNMP_TRAPS = Counter("ocs_snmp_notifications", "SNMP traps and informs accepted",
                     registry=REGISTRY)
SNMP_DROPPED = Counter("ocs_snmp_dropped", "SNMP packets dropped, by reason", ["reason"],
                       registry=REGISTRY)

DIAMETER_ANSWERS = Counter("ocs_diameter_answers", "Diameter answers sent, by Result-Code",
                           ["result"], registry=REGISTRY)
DIAMETER_DUPLICATES = Counter("ocs_diameter_duplicates",
                              "Duplicate requests answered from the duplicate cache",
                              registry=REGISTRY)
DIAMETER_NOTIFICATIONS = Counter("ocs_diameter_server_requests",
                                 "RAR/ASR sent by this server, by kind and answer Result-Code",
                                 ["kind", "result"], registry=REGISTRY)
DIAMETER_REFUSED = Counter("ocs_diameter_connections_refused", "Diameter connections "
                           "refused or closed by a limit (max_connections, cer_timeout, "
                           "oversize_before_cer, write_stalled)", ["reason"], registry=REGISTRY)
DIAMETER_PEERS = Gauge("ocs_diameter_peers", "Open Diameter peer connections",
                       registry=REGISTRY, multiprocess_mode="livesum")

WORKER_RESTARTS = Counter("ocs_worker_restarts",
                          "Worker processes started again after they ended unasked",
                          registry=REGISTRY)
CHF_REQUESTS = Counter("ocs_chf_requests", "Nchf requests answered, by operation and HTTP "
                       "status", ["operation", "status"], registry=REGISTRY)
CHF_DROPPED = Counter("ocs_chf_dropped", "Nchf connections or streams dropped, by reason "
                      "(max_connections, h2_protocol_error, http1_protocol_error, "
                      "body_too_large, buffered, rapid_reset, request_timeout, idle)",
                      ["reason"], registry=REGISTRY)
CHF_NOTIFICATIONS = Counter("ocs_chf_notifications", "ChargingNotifyRequests to consumers, "
                            "by type and outcome (delivered, retried, failed)",
                            ["type", "outcome"], registry=REGISTRY)
NMS_POLLS = Counter("ocs_nms_polls", "Polls of network elements by outcome (ok, unreachable)",
                    ["outcome"], registry=REGISTRY)
NMS_REACHABLE = Gauge("ocs_nms_reachable", "1 when the element answered its last poll",
                      ["element"], registry=REGISTRY, multiprocess_mode="max")
NMS_HEALTH = Gauge("ocs_nms_health", "Health score 0-100 of the element's last poll",
                   ["element"], registry=REGISTRY, multiprocess_mode="max")
NMS_CPU = Gauge("ocs_nms_cpu_pct", "Element CPU load, % (hrProcessorLoad averaged)",
                ["element"], registry=REGISTRY, multiprocess_mode="max")
NMS_MEMORY = Gauge("ocs_nms_memory_pct", "Element memory in use, % (hrStorageRam)",
                   ["element"], registry=REGISTRY, multiprocess_mode="max")
NMS_MBPS = Gauge("ocs_nms_interface_mbps", "Interface throughput, Mbit/s",
                 ["element", "interface", "direction"], registry=REGISTRY,
                 multiprocess_mode="max")
NMS_UTILIZATION = Gauge("ocs_nms_interface_utilization_pct", "Interface utilisation, % of "
                        "capacity", ["element", "interface"], registry=REGISTRY,
                        multiprocess_mode="max")
NMS_LOSS = Gauge("ocs_nms_interface_packet_loss_pct", "Interface packet loss, % (errors + "
                 "discards over packets in)", ["element", "interface"], registry=REGISTRY,
                 multiprocess_mode="max")
NMS_REMEDIATIONS = Counter("ocs_nms_remediations", "Auto-remediation attempts by action and "
                           "outcome (done, failed, skipped, cooldown, busy)",
                           ["action", "outcome"], registry=REGISTRY)
LIVE_SESSIONS = Gauge("ocs_live_sessions", "Sessions in the protocols' live tables",
                      ["protocol"], registry=REGISTRY, multiprocess_mode="livesum")
SESSION_EVENTS = Counter("ocs_session_events",
                         "Live sessions expired (deadline passed) or found needing an abort "
                         "or a re-authorisation by the review", ["protocol", "event"],
                         registry=REGISTRY)
