"""Curating flagged rows: include only after seeing the flags, count them, backfill them.

A flag (capture/flags.py) keeps a row out of the export until a curator includes
it knowing the flags: ``include --accept-flags``, or review's include key (the
flags are on screen there). Rows recorded before flags existed carry none
(NULL) until ``backfill`` computes them, a batch per transaction. A row the check
fails on (a bug) gets ``check_failed``, logged with its id: the backfill moves on,
and the row stays out of the export until a curator accepts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from curation.capture import flags as auto_flags
from curation.db import flags as db
from curation.errors import Conflict

if TYPE_CHECKING:
    from curation.db.connect import Connection

BACKFILL_BATCH = 1000
log = logging.getLogger(__name__)


def check_include(
    conn: Connection, namespace: str, ids: Sequence[int], *, accept: bool
) -> list[int]:
    """The rows among ``ids`` whose flags this include accepts; Conflict (nothing
    changed) when some carry flags and ``accept`` is not given: including a flagged
    row needs the curator to say they saw its flags."""
    needing = db.unaccepted(conn, namespace, ids)
    if needing and not accept:
        first, reasons = next(iter(needing.items()))
        others = f" (and {len(needing) - 1} more flagged rows)" if len(needing) > 1 else ""
        raise Conflict(
            f"row {first} is flagged {', '.join(reasons)}{others}; nothing changed: read it "
            f"(curation show {namespace} {first}), then include with --accept-flags"
        )
    return list(needing)


def accept(conn: Connection, namespace: str, ids: Sequence[int]) -> None:
    if ids:
        db.accept(conn, namespace, ids)


def decide_proposals(
    conn: Connection, namespace: str, ids: Sequence[int], *, accept: bool, accept_flags: bool
) -> list[int]:
    """Accept or reject teacher proposals; the ids changed. Accepting one includes its
    row, so a flagged row needs ``accept_flags`` exactly as ``include`` does (Conflict,
    nothing changed, without it), and the acceptance is recorded: the proposal replaces
    the answer the flags were found on, but nobody should train on a row whose flags no
    curator has seen."""
    from curation.db import evals

    seen = check_include(conn, namespace, ids, accept=accept_flags) if accept else []
    changed = evals.decide_proposals(conn, namespace, ids, accept)
    seen_and_changed = [i for i in seen if i in changed]
    if seen_and_changed:
        db.accept(conn, namespace, seen_and_changed)
    return changed


def counts(conn: Connection, namespace: str | None) -> dict[str, dict[str, int]]:
    """Per namespace: how many rows carry each reason."""
    out: dict[str, dict[str, int]] = {}
    for r in db.counts(conn, namespace):
        entry = out.setdefault(str(r["namespace"]), {})
        entry[str(r["reason"])] = int(r["n"])
    return out


def summary(found: dict[str, int]) -> str:
    """``truncated 3, refusal 1`` (stats' table), in the order of the reasons."""
    known = [r for r in auto_flags.REASONS if found.get(r)]
    return ", ".join(f"{r} {found[r]}" for r in known) or "-"


def backfill(
    conn: Connection,
    namespace: str,
    *,
    batch: int = BACKFILL_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Flag every row recorded before flags existed, a batch per transaction (``conn`` in
    autocommit), walking the ids once; how many rows were done and flagged per reason."""
    done: dict[str, int] = {"rows": 0}
    after = 0
    while True:
        with conn.transaction():
            found = db.unflagged(conn, namespace, after, batch)
            computed = {int(r["id"]): _flags_of(namespace, r) for r in found}
            if computed:
                db.set_flags(conn, namespace, computed)
        for reasons in computed.values():
            for reason in reasons:
                done[reason] = done.get(reason, 0) + 1
        done["rows"] += len(computed)
        if on_batch:
            on_batch(len(computed))
        if len(found) < batch:
            return done
        after = max(computed)


def _flags_of(namespace: str, row: dict[str, Any]) -> list[str]:
    """The row's flags; ``check_failed`` when the check raises (it must not: a bug), so
    one row cannot stop the backfill, nor be left NULL to be tried again forever."""
    try:
        return auto_flags.for_row(
            _loads(row["request"]), _loads(row["response"]), rewritten=bool(row["rewritten"])
        )
    except Exception:
        log.exception("flag check failed on %s row %s: flagged check_failed", namespace, row["id"])
        return [auto_flags.CHECK_FAILED]


def _loads(value: Any) -> Any:
    try:
        return orjson.loads(value) if isinstance(value, str) else value
    except orjson.JSONDecodeError:
        return None
