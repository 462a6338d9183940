"""Curating rows: plain functions over a connection, one transaction each.

Every change names its curator (``curation.curator`` for the transaction), so
the audit trigger records who did it; psql changes are recorded as the
database user. The queries themselves run in ``curation.db.curate``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from curation.curate import flagged
from curation.db import curate as db
from curation.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from curation.db.connect import Connection
    from curation.db.queries import Composed

STATES = ("included", "excluded", "pending")
FEEDBACK = ("negative", "positive", "any")  # polarities of feedback from production
VERB = {"included": "include", "excluded": "exclude", "pending": "reset"}


@dataclass(frozen=True)
class ListFilter:
    state: str | None = None
    search: str | None = None
    since: datetime | None = None
    limit: int = 50
    sort: str = "recent"
    feedback: str | None = None  # negative, positive or any: rows with such feedback
    flag: str | None = None  # a reason of capture/flags.py, or any: rows flagged so
    disagreements: bool = False  # only rows a live student disagreed on, latest first


def as_curator(conn: Connection, curator: str) -> None:
    db.set_curator(conn, curator)


def list_rows(conn: Connection, namespace: str, f: ListFilter) -> list[dict[str, Any]]:
    return db.list_rows(conn, namespace, **_list_parts(f))


def list_query(namespace: str, f: ListFilter) -> tuple[Composed, dict[str, Any]]:
    """The fixed query of ``f``'s state and order, with its filters (list_rows in curate.sql)."""
    return db.list_query(namespace, **_list_parts(f))


def _list_parts(f: ListFilter) -> dict[str, Any]:
    """The named fragments of ``f``'s filters and order, and its parameters."""
    filters = [f"list_{f.state}"] if f.state in STATES else []
    filters += [f"list_{name}" for name in ("search", "since") if getattr(f, name) is not None]
    filters += [f"list_feedback_{f.feedback}"] if f.feedback in FEEDBACK else []  # feedback.sql
    filters += [] if f.flag is None else ["list_flag_any" if f.flag == "any" else "list_flag"]
    order = "list_most_seen" if f.sort == "seen" else "list_newest"
    if f.disagreements:  # rollout.sql: shadow_disagreement
        filters, order = [*filters, "list_disagreements"], "list_last_disagreement"
    return {
        "filters": filters,
        "order": order,
        "search": f.search,
        "since": f.since,
        "limit": f.limit,
        "flag": f.flag,
    }


def get_row(conn: Connection, namespace: str, row_id: int) -> dict[str, Any]:
    row = db.get_row(conn, namespace, row_id)
    if row is None:
        raise NotFound(f"no row {row_id} in {namespace}; see: curation list {namespace}")
    return row


def matching(conn: Connection, namespace: str, search: str) -> list[int]:
    return db.ids_matching(conn, namespace, search)


def set_state(
    conn: Connection,
    namespace: str,
    ids: Sequence[int],
    state: str,
    *,
    curator: str,
    note: str | None = None,
    strict: bool = True,
    accept_flags: bool = False,
) -> list[int]:
    """Move rows to ``state`` (all or none); returns the ids changed.

    ``strict``: a row already in that state is an error; otherwise it is left out.
    Including a flagged row needs ``accept_flags`` (the curator saw its flags), which
    is recorded, also on a row already included.
    """
    if state not in STATES:
        raise InvalidInput(f"unknown state {state!r}")
    as_curator(conn, curator)
    found = db.row_states(conn, namespace, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no row {', '.join(map(str, missing))} in {namespace}; nothing changed")
    accepted = (
        flagged.check_include(conn, namespace, ids, accept=accept_flags)
        if state == "included"
        else []
    )
    already = [i for i in ids if found[i] == state and i not in accepted]
    if already and strict:
        raise Conflict(
            f"{_rows(already)} already {state}; nothing changed "
            f"(curation {VERB['pending']} {namespace} ID to undo a decision)"
        )
    todo = [i for i in ids if found[i] != state]
    if todo:
        db.set_state(conn, namespace, todo, state, note)
    flagged.accept(conn, namespace, accepted)
    return sorted(set(todo) | set(accepted))


def _rows(ids: Sequence[int]) -> str:
    """``row 18 is`` / ``rows 18, 19 are``."""
    listed = ", ".join(map(str, ids))
    return f"row {listed} is" if len(ids) == 1 else f"rows {listed} are"


def set_correction(
    conn: Connection, namespace: str, row_id: int, message: dict[str, Any], *, curator: str
) -> None:
    as_curator(conn, curator)
    db.set_correction(conn, namespace, row_id, json.dumps(message))


def history(conn: Connection, namespace: str, row_id: int) -> list[dict[str, Any]]:
    return db.history(conn, namespace, row_id)


ROW_ID_MAX = 2**63 - 1  # ids are bigints


def parse_ids(text: str) -> list[int]:
    """'3,14,15' -> [3, 14, 15]; InvalidInput unless every part is a row id."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or not all(1 <= i <= ROW_ID_MAX for i in ids):
        raise InvalidInput(f"{text!r} is not a list of row ids: use e.g. 3,14,15")
    return ids


_AGE = re.compile(r"^(\d+)\s*(d|h|w|days?|hours?|weeks?)$")


def parse_age(text: str) -> str:
    """'90d' -> '90 days' (a PostgreSQL interval)."""
    m = _AGE.match(text.strip().lower())
    if not m:
        raise InvalidInput(
            f"--older-than {text!r}: use a number of days, hours or weeks, e.g. 90d, 12h, 4w"
        )
    unit = {"d": "days", "h": "hours", "w": "weeks"}[m.group(2)[0]]
    return f"{m.group(1)} {unit}"


def purge(
    conn: Connection,
    namespace: str,
    older_than: str,
    *,
    curator: str,
    include_excluded: bool = False,
    force: bool = False,
    batch: int = 5000,
) -> int:
    """Delete old never-included rows in batches, each its own short transaction
    (audited by the delete trigger), walking the ids once; ``conn`` must be autocommit."""
    age = parse_age(older_than)
    total, after = 0, 0
    while True:
        deleted = db.purge_batch(
            conn,
            namespace,
            curator=curator,
            after=after,
            older_than=age,
            include_excluded=include_excluded,
            force=force,
            batch=batch,
        )
        total += len(deleted)
        if len(deleted) < batch:
            return total
        after = max(deleted)


def next_pending(conn: Connection, namespace: str, skip: Sequence[int]) -> dict[str, Any] | None:
    """Lock and return the next row to review (call inside a transaction)."""
    return db.next_pending(conn, namespace, skip)


def progress(conn: Connection, namespace: str) -> tuple[int, int]:
    """(reviewed, total) rows of ``namespace``."""
    return db.review_progress(conn, namespace)
