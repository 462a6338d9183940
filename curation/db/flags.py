"""The automatic flags' queries (flags.sql): counts, acceptance, export's skips, backfill."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from curation.db import queries

if TYPE_CHECKING:
    from curation.db.connect import Connection
    from curation.db.export import Filters


def counts(conn: Connection, namespace: str | None) -> list[dict[str, Any]]:
    """Rows per namespace and reason, and how many of them are included unaccepted."""
    return conn.execute(queries.get("flag_counts"), {"namespace": namespace}).fetchall()


def unaccepted(conn: Connection, namespace: str, ids: Sequence[int]) -> dict[int, list[str]]:
    """Those of ``ids`` that carry flags no curator has accepted, with their flags."""
    found = conn.execute(
        queries.for_namespace("unaccepted_flags", namespace),
        {"namespace": namespace, "ids": list(ids)},
    )
    return {int(r["id"]): list(r["flags"]) for r in found}


def accept(conn: Connection, namespace: str, ids: Sequence[int]) -> None:
    """Record that the transaction's curator included ``ids`` having seen their flags."""
    conn.execute(
        queries.for_namespace("accept_flags", namespace), {"namespace": namespace, "ids": list(ids)}
    )


def export_flagged(
    conn: Connection, namespace: str, filters: Filters
) -> list[tuple[int, list[str]]]:
    """The rows an export leaves out for their unaccepted flags, oldest first."""
    found = conn.execute(queries.for_namespace("export_flagged", namespace), filters.params())
    return [(int(r["id"]), list(r["flags"])) for r in found]


def unflagged(conn: Connection, namespace: str, after: int, batch: int) -> list[dict[str, Any]]:
    """Up to ``batch`` rows never flagged (recorded before flags existed), ids above ``after``."""
    return conn.execute(
        queries.for_namespace("unflagged_batch", namespace),
        {"namespace": namespace, "after": after, "batch": batch},
    ).fetchall()


def set_flags(conn: Connection, namespace: str, found: dict[int, list[str]]) -> None:
    """Store each row's flags (only where none are stored yet)."""
    conn.execute(
        queries.for_namespace("set_flags", namespace),
        {
            "namespace": namespace,
            "ids": list(found),
            "flags": [",".join(f) for f in found.values()],
        },
    )
