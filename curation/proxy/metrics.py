"""Prometheus metrics of the proxy, in a registry of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from curation.proxy.recorder import Recorder
    from curation.proxy.serving import ServingTable
    from curation.proxy.spool import Spool

FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "curation_requests",
            "Requests answered (by the upstream or by the proxy itself), by namespace, kind and status.",
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
            "Chat completions and responses not recorded, by reason (opt_out, no_namespace, status, "
            "client_disconnect, upstream_cut; unrecordable ones: curation_unrecordable_total).",
            ["reason"],
            registry=r,
        )
        self.unrecorded_requests = Counter(
            "curation_unrecorded_requests",
            "Calls forwarded without being recorded because their path is not recorded "
            "(only POST /v1/chat/completions and POST /v1/responses are), by API family "
            "(/v1/embeddings, /v1/files, ...; other beyond OpenAI's families).",
            ["path"],
            registry=r,
        )
        self.spooled = Counter("curation_spooled", "Captures appended to the spool.", registry=r)
        self.lanes = Counter(
            "curation_lane",
            "Requests by who handled them: the fast lane (a recorded POST with a "
            "Content-Length body for a namespace the teacher answers), or aiohttp (a connection "
            "handed over, counted once, at its first request of any other shape).",
            ["lane"],
            registry=r,
        )
        self.dropped = Counter(
            "curation_dropped",
            "Captures lost: spool over its cap, or the disk refused.",
            ["reason"],
            registry=r,
        )
        self.refused_connections = Counter(
            "curation_client_connections_refused",
            "Client connections closed at once: over CURATION_MAX_CLIENT_CONNECTIONS.",
            registry=r,
        )
        self.served = Counter(
            "curation_served",
            "Chat completions of served namespaces, by who answered (fine_tuned or original).",
            ["namespace", "answered_by"],
            registry=r,
        )
        self.student_fallbacks = Counter(
            "curation_student_fallbacks",
            "Calls of a served namespace that its student endpoint failed before the client got "
            "a byte, answered by the teacher instead, by reason (connect, timeout, status_4xx, "
            "status_5xx, cut).",
            ["namespace", "reason"],
            registry=r,
        )
        self.comparisons = Counter(
            "curation_shadow_comparisons",
            "Live comparisons of a student with its teacher (kind shadow or watch), by result "
            "(agree, disagree, error: the background call or the comparator failed).",
            ["namespace", "kind", "result"],
            registry=r,
        )
        self.background_dropped = Counter(
            "curation_background_dropped",
            "Shadow and watch calls not made or not stored, by reason (budget: over the "
            "namespace's shadow_per_minute; concurrency: over CURATION_BACKGROUND_CONCURRENCY; "
            "queue: the comparison could not wait for PostgreSQL).",
            ["namespace", "reason"],
            registry=r,
        )
        self.comparison_latency = Histogram(
            "curation_comparison_latency_seconds",
            "Latency of the student and of the teacher on the calls compared live, side by side.",
            ["namespace", "answered_by"],
            buckets=SLOW,
            registry=r,
        )


class ServingCollector(Collector):
    """Each served namespace's shares, read from the proxy's serving table at scrape time."""

    def __init__(self, serving: ServingTable) -> None:
        self.serving = serving

    def collect(self) -> Iterator[Metric]:
        shares = {
            "serve_percent": ("percent", "Share of calls the student answers."),
            "serve_shadow_percent": ("shadow_percent", "Share of the teacher's calls shadowed."),
            "serve_watch_percent": ("watch_percent", "Share of the student's calls watched."),
        }
        for name, (attr, doc) in shares.items():
            gauge = GaugeMetricFamily(f"curation_{name}", doc, labels=["namespace"])
            for ns, served in sorted(self.serving.by_namespace.items()):
                gauge.add_metric([ns], float(getattr(served, attr)))
            yield gauge


class RecorderCollector(Collector):
    """The recorder process's counters, read from its status file at scrape time."""

    def __init__(self, recorder: Recorder, spool: Spool) -> None:
        self.recorder = recorder
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        status = self.recorder.status()
        counters = {
            "rows_written": "Captures committed to PostgreSQL (rejected ones not counted).",
            "write_errors": "Failed batch writes (each retried).",
            "rejected": "Captures PostgreSQL refused (kept in the spool's rejected.jsonl).",
            "unrecordable": "Captures that could not become rows (kept in rejected.jsonl).",
            "torn": "Torn frames skipped in the spool (a process died mid-write).",
        }
        for key, doc in counters.items():
            yield CounterMetricFamily(f"curation_{key}", doc, value=float(status.get(key, 0)))
        yield CounterMetricFamily(
            "curation_recorder_restarts",
            "Times the recorder process was restarted.",
            value=float(self.recorder.restarts),
        )
        yield GaugeMetricFamily(
            "curation_database_up",
            "1 while the recorder reaches PostgreSQL.",
            value=1.0 if self.recorder.database_ok else 0.0,
        )
        yield GaugeMetricFamily(
            "curation_recorder_stalled",
            "1 while the recorder makes no progress with captures waiting (it is restarted).",
            value=1.0 if self.recorder.stalled else 0.0,
        )
        self.spool.rescan()  # once per scrape: the recorder deletes what it has written
        committed = self.recorder.committed()
        yield GaugeMetricFamily(
            "curation_recorder_queue_depth",
            "Captures spooled but not yet in PostgreSQL (exact, also across recorder restarts).",
            value=float(self.spool.frames_after(committed)),
        )
        yield GaugeMetricFamily(
            "curation_recorder_queue_bytes",
            "Spooled bytes not yet in PostgreSQL (exact, also across recorder restarts).",
            value=float(self.spool.bytes_after(committed)),
        )
        yield GaugeMetricFamily(
            "curation_spool_bytes", "Bytes in spool segments.", value=float(self.spool.total_bytes)
        )
