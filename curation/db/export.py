"""Reading curated rows for export (a server-side cursor) and recording datasets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from curation.db import queries
from curation.db.connect import Connection

FETCH = 2000


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    ids: Sequence[int] | None = None
    tag_key: str | None = None
    tag_value: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "ids": list(self.ids) if self.ids else None,
            "tag_key": self.tag_key,
            "tag_value": self.tag_value,
        }


def count_rows(conn: Connection, namespace: str, filters: Filters) -> int:
    """How many rows ``iter_rows`` will yield (for a progress bar)."""
    query = sql.SQL("SELECT count(*) AS n FROM ({}) AS q").format(
        queries.for_namespace("export_rows", namespace)
    )
    row = conn.execute(query, filters.params()).fetchone()
    return int(row["n"]) if row else 0


def iter_rows(conn: Connection, namespace: str, filters: Filters) -> Iterator[tuple[Any, ...]]:
    """(id, version, user_prompt, request, response, corrected_response) as text, streamed:
    memory stays flat however many rows there are."""
    with conn.cursor(name="curation_export", row_factory=_tuple_row) as cur:
        cur.itersize = FETCH
        cur.execute(queries.for_namespace("export_rows", namespace), filters.params())
        yield from cur


def _tuple_row(cursor: Any) -> Any:
    from psycopg.rows import tuple_row

    return tuple_row(cursor)


def find_dataset(
    conn: Connection, namespace: str, sha256: str, base_model: str, fmt: str
) -> int | None:
    row = conn.execute(
        queries.get("find_dataset"),
        {
            "namespace": namespace,
            "sha256": sha256,
            "base_model": base_model,
            "format": fmt,
        },
    ).fetchone()
    return int(row["id"]) if row else None


def record_dataset(
    conn: Connection, fields: dict[str, Any], lineage: Iterator[tuple[int, int, str, int]]
) -> int:
    """Insert the dataset and one dataset_row per example, in the caller's transaction."""
    row = conn.execute(
        queries.get("insert_dataset"), {**fields, "manifest": Jsonb(fields["manifest"])}
    ).fetchone()
    assert row is not None
    dataset_id: int = row["id"]
    with conn.cursor() as cur, cur.copy(queries.get("copy_dataset_rows")) as copy:
        for row_id, version, split, tokens in lineage:
            copy.write_row((dataset_id, fields["namespace"], row_id, version, split, tokens))
    return dataset_id
