"""Prometheus metrics of the proxy, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "curation_requests",
            "Requests answered, by namespace, kind and status.",
            ["namespace", "kind", "status"],
            registry=r,
        )
        self.added_latency = Histogram(
            "curation_added_latency_seconds",
            "Time the proxy adds to a call (handler time minus upstream time, to the response headers).",
            buckets=FAST,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "curation_upstream_latency_seconds",
            "Upstream time to the last byte.",
            ["kind"],
            buckets=SLOW,
            registry=r,
        )
        self.upstream_errors = Counter(
            "curation_upstream_errors",
            "Upstream failures the proxy answered itself.",
            ["reason"],
            registry=r,
        )
        self.unrecorded = Counter(
            "curation_unrecorded",
            "Chat completions not recorded, by reason (opt_out, no_namespace, status, "
            "client_disconnect, upstream_cut, unrecordable).",
            ["reason"],
            registry=r,
        )
        self.spooled = Counter("curation_spooled", "Captures appended to the spool.", registry=r)
        self.rows_written = Counter(
            "curation_rows_written", "Captures committed to PostgreSQL.", registry=r
        )
        self.write_errors = Counter(
            "curation_write_errors", "Failed batch writes (each retried).", registry=r
        )
        self.rejected = Counter(
            "curation_rejected",
            "Captures PostgreSQL refused (kept in the spool's rejected.jsonl).",
            registry=r,
        )
        self.dropped = Counter(
            "curation_dropped",
            "Captures lost: spool over its cap, or the disk refused.",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "curation_recorder_queue_depth",
            "Captures spooled but not yet in PostgreSQL.",
            registry=r,
        )
        self.served = Counter(
            "curation_served",
            "Chat completions of served namespaces, by who answered (fine_tuned or original).",
            ["namespace", "answered_by"],
            registry=r,
        )
        self.spool_bytes = Gauge("curation_spool_bytes", "Bytes in spool segments.", registry=r)
        self.database_up = Gauge(
            "curation_database_up", "1 while the writer reaches PostgreSQL.", registry=r
        )
