"""Coverage over a connection: assign rows to clusters, report, order a review,
warn of near-duplicates. The decisions are pure (``curation.coverage``); the
queries run in ``curation.db.coverage``.

Rows are assigned when asked (``curation coverage``, a review ``--order coverage``),
never on the capture path: the proxy's writer stays as fast as before.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from curation.coverage import groups
from curation.coverage.signatures import Signatures, from_bytes, signatures, to_bytes

if TYPE_CHECKING:
    from curation.db.connect import Connection
    from curation.db.export import Filters

Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]
SHOWN_CANDIDATES = 1000  # pending rows of a covered cluster compared with its included ones


@dataclass(frozen=True)
class Updated:
    assigned: int  # rows given a cluster by this run
    new_clusters: int
    seconds: float


def update(
    conn: Connection, namespace: str, *, recluster: bool = False, embed: Embed | None = None
) -> Updated:
    """Assign every row without a cluster (all rows, anew, with ``recluster``), in one
    transaction under the namespace's coverage lock. With no clusters yet the rows are
    clustered in bulk; otherwise each joins the nearest cluster or starts one.

    ``embed`` (prompts -> vectors): recluster every row by the cosine similarity of
    their embeddings instead of their words. Signatures are still stored, so later
    rows join those clusters by their words (through each cluster's example)."""
    from curation.db import coverage as db  # psycopg: not for `curation --help`

    started = time.perf_counter()
    with conn.transaction():
        db.lock(conn, namespace)
        if recluster or embed is not None:
            db.clear(conn, namespace)
        ids = array("q")
        seen = array("q")
        texts: list[str] | None = [] if embed is not None else None
        rows = _texts(db.prompts(conn, namespace, unassigned=True), ids, seen, texts)
        sigs = signatures(rows)
        if not ids:
            return Updated(0, 0, time.perf_counter() - started)
        reps = db.representatives(conn, namespace)
        if embed is not None and texts is not None:
            labels = groups.leaders(embed(texts))
            made = db.new_clusters(conn, namespace, int(labels.max()) + 1)
            clusters = [made[label] for label in labels.tolist()]
        elif reps:
            found = groups.assign(sigs, [c for c, _ in reps], from_bytes(s for _, s in reps))
            made = db.new_clusters(conn, namespace, found.new_clusters)
            clusters = [
                made[n] if cid is None else cid
                for cid, n in zip(found.existing, found.new, strict=True)
            ]
        else:
            labels = groups.cluster(sigs)
            made = db.new_clusters(conn, namespace, int(labels.max()) + 1)
            clusters = [made[label] for label in labels.tolist()]
        db.write_rows(conn, namespace, zip(ids, clusters, map(to_bytes, sigs), strict=True))
        if reps and embed is None:
            db.add_totals(conn, groups.totals(clusters, ids, seen))
        else:
            db.refresh(conn, namespace)
    return Updated(len(ids), len(made), time.perf_counter() - started)


def _texts(
    rows: Iterator[dict[str, Any]], ids: array[int], seen: array[int], keep: list[str] | None
) -> Iterator[str]:
    """The prompts, keeping only their ids and counts (and the prompts themselves in
    ``keep``, for embeddings): a million prompts never sit in memory."""
    for row in rows:
        ids.append(row["id"])
        seen.append(row["times_seen"])
        if keep is not None:
            keep.append(row["user_prompt"])
        yield row["user_prompt"]


def report(conn: Connection, namespace: str, limit: int | None = None) -> dict[str, Any]:
    """``{"clusters": [...], "covered_share": x}``, biggest traffic first; the share counts
    every cluster, ``limit`` only trims the list."""
    from curation.db import coverage as db

    found = db.report(conn, namespace)
    share = groups.covered_share(
        [int(c["traffic"]) for c in found], [int(c["included"]) for c in found]
    )
    clusters = [
        {
            "id": int(c["id"]),
            "size": int(c["size"]),
            "traffic": int(c["traffic"]),
            "included": int(c["included"]),
            "example": c["example"],
            "example_row_id": c["example_row_id"],
            "negative_feedback": int(c["negative_feedback"]),
            "disagreements": int(c["disagreements"]),
        }
        for c in found[:limit]
    ]
    return {"clusters": clusters, "covered_share": round(share, 6)}


@dataclass
class Plan:
    """A coverage review's clusters, as ``[covered, -traffic, cluster id]`` in the order
    their rows are shown. Ranked once, at the start (one aggregate over the namespace);
    the cluster a row is about to come from is checked again first, so a decision (this
    curator's or another's) re-ranks it then."""

    order: list[list[int]] = field(default_factory=list)


def plan(conn: Connection, namespace: str) -> Plan:
    from curation.db import coverage as db

    found = db.review_plan(conn, namespace)
    return Plan(sorted([int(covered), -traffic, cid] for cid, traffic, covered in found))


def next_for_review(
    conn: Connection, namespace: str, skip: Sequence[int], ranked: Plan
) -> dict[str, Any] | None:
    """Lock and return the next row for a coverage review (inside a transaction): from
    the uncovered cluster with most traffic, its most-seen row; once every cluster is
    covered, from the one with most traffic, the row least like its included rows.
    A cluster whose pending rows are all decided, skipped or held by another curator
    leaves the plan; None when the plan is empty."""
    from curation.db import coverage as db

    while ranked.order:
        was, _, cluster_id = ranked.order[0]
        now = int(db.covered(conn, namespace, cluster_id))
        if now != was:
            ranked.order[0][0] = now
            ranked.order.sort()
            continue
        row = _least_like_row(conn, namespace, cluster_id, bool(now), skip)
        if row is not None:
            return row
        ranked.order.pop(0)
    return None


def _least_like_row(
    conn: Connection, namespace: str, cluster_id: int, covered: bool, skip: Sequence[int]
) -> dict[str, Any] | None:
    """The cluster's next pending row, locked: the most seen of an uncovered cluster, the
    least like its included rows of a covered one; None if none can be had."""
    from curation.db import coverage as db

    candidates = db.cluster_rows(
        conn, namespace, cluster_id, pending=True, skip=skip, limit=SHOWN_CANDIDATES
    )
    order: Sequence[int] = range(len(candidates))
    if covered and candidates:
        included = db.cluster_rows(conn, namespace, cluster_id, pending=False)
        order = groups.least_like(
            from_bytes(s for _, s in candidates), from_bytes(s for _, s in included)
        )
    for i in order:
        row = db.lock_pending(conn, namespace, candidates[i][0])
        if row is not None:
            return row
    return None


def near_duplicate_warnings(conn: Connection, namespace: str, ids: Sequence[int]) -> list[str]:
    """One line per row of ``ids`` that is a near-duplicate of another included row (or
    of an earlier one of ``ids``), naming it."""
    from curation.db import coverage as db

    new = _with_signatures(db.rows_by_id(conn, namespace, ids))
    old = _with_signatures(db.included_signatures(conn, namespace, ids))
    found = groups.near_duplicates(new, old)
    return [
        f"row {row_id} is a near-duplicate of included row {other} (similarity {score:.2f}); "
        f"included anyway (curation reset {namespace} {row_id} to take it back)"
        for row_id, (other, score) in sorted(found.items())
    ]


def _with_signatures(rows: list[dict[str, Any]]) -> list[tuple[int, Signatures]]:
    """(id, signature) of each row: the stored one, else hashed now."""
    missing = [r["user_prompt"] for r in rows if r["signature"] is None]
    fresh = iter(signatures(missing))
    return [
        (
            int(r["id"]),
            next(fresh) if r["signature"] is None else from_bytes([bytes(r["signature"])])[0],
        )
        for r in rows
    ]


def near_duplicates_to_drop(conn: Connection, namespace: str, filters: Filters) -> dict[int, int]:
    """For ``export --dedupe near``: of the rows the export would write, dropped row id ->
    kept row id (see ``groups.dedupe``)."""
    from curation.db import coverage as db

    rows = db.export_rows(conn, namespace, filters)
    if not rows:
        return {}
    sigs = np.stack([s for _, s in _with_signatures(rows)])
    return groups.dedupe(
        [int(r["id"]) for r in rows],
        sigs,
        [bool(r["corrected"]) for r in rows],
        [int(r["times_seen"]) for r in rows],
    )
