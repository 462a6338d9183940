"""The web page's database side: one connection per page session, and its queries (web.sql).

A session signed in with a PostgreSQL login works on connections opened *as that
login*, so its grants and the audit trail's ``login`` are exactly those of psql;
a token session uses the server's own DATABASE_URL. Either way each session has a
connection of its own, because "next pending" holds its row locked in an open
transaction (as ``curation review`` does) until the curator decides it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo

from curation.db import connect, queries
from curation.db.connect import Connection
from curation.db.errors import first_line
from curation.errors import Conflict, CurationError, DatabaseUnavailable, PermissionDenied

T = TypeVar("T")
COUNT_CAP = 1000  # a filtered rows page counts up to this many, then says "1000+"
PROMPT_SAMPLE = 1000  # the namespaces page finds the production prompt in this many latest rows
# libpq skips a passfile that does not exist: a sign-in never falls back to the server's ~/.pgpass
NO_PASSFILE = "/nonexistent/curation-web/no-passfile"
NO_PASSWORD_CHECK = (
    "this PostgreSQL does not check passwords (trust/peer auth); "
    "sign in with the token link curation web printed"
)


def login_url(url: str, user: str, password: str) -> str:
    """``url`` (host, port, database, sslmode) with another login, and only the password
    given: no passfile, no service file's."""
    params = {k: v for k, v in connect.check_url(url).items() if k not in ("service", "passfile")}
    return conninfo.make_conninfo(
        **{**params, "user": user, "password": password, "passfile": NO_PASSFILE}
    )


def escape_like(text: str) -> str:
    """``text`` matched literally by ILIKE (backslash is PostgreSQL's default ESCAPE)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Link:
    """One page session's connection, opened on first use and again after it broke.

    ``run`` calls ``work`` on it under a lock (the page serves requests in threads).
    A claimed row (``claim``) stays locked in the open transaction until ``run`` is
    called with ``commit=True`` (a decision) or a statement fails; every other
    ``run`` commits when nothing is claimed, so no read leaves a transaction open.
    """

    def __init__(self, url: str, *, password_checked: bool = False) -> None:
        self._url = url
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.claimed: int | None = None
        # a login session: a server that let it in without checking its password
        # (trust, peer) would let anyone in as anyone, so its connections are refused
        self.password_checked = password_checked
        self.closed = False  # signed out: a request racing the sign-out opens nothing

    def check(self) -> None:
        """Connect now: a wrong login or password fails the sign-in, not a later page.
        PostgreSQL's reason (``role "x" does not exist``) is for the server's log only."""
        try:
            self.run(lambda conn: None)
        except DatabaseUnavailable as exc:
            said = str(exc.__cause__ or "")
            if "FATAL:" not in said:
                raise
            reason = said.split("FATAL:", 1)[1].strip().splitlines()[0]
            raise PermissionDenied(f"PostgreSQL refused the login: {reason}") from exc

    def run(self, work: Callable[[Connection], T], *, commit: bool = False) -> T:
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._run(work, commit)
                except psycopg.OperationalError as exc:
                    # The server closed the connection while the page was idle (a restart,
                    # the idle-in-transaction timeout): nothing of ``work`` was committed.
                    if attempt == 2:
                        raise _translate(self._url, exc) from exc
                except psycopg.Error as exc:
                    raise _translate(self._url, exc) from exc
            raise AssertionError("unreachable")

    def _run(self, work: Callable[[Connection], T], commit: bool) -> T:
        conn = self._open()
        held = self.claimed is not None
        if held:  # a refused action or failed read undoes itself, not the claim
            conn.execute(queries.get("web_savepoint"))
        try:
            result = work(conn)
            if commit or self.claimed is None:
                conn.commit()
                self.claimed = None
            return result
        except psycopg.OperationalError as exc:
            if not (held and self._back_to_savepoint(conn)):
                self._abandon(conn)
            if self._conn is not None:  # the connection survived: the statement failed
                raise _translate(self._url, exc) from exc
            raise
        except BaseException:
            if not (held and self._back_to_savepoint(conn)):
                self._abandon(conn)
            raise

    def _back_to_savepoint(self, conn: Connection) -> bool:
        """Undo the failed request only; False: the claim is gone too (a broken
        connection, or ``work`` committed and took the savepoint with it)."""
        if conn.closed or conn.broken or self.claimed is None:
            return False
        try:
            conn.execute(queries.get("web_rollback_to_savepoint"))
        except psycopg.Error:
            return False
        return True

    def claim(
        self,
        namespace: str,
        skip: Sequence[int],
        pick: Callable[[Connection], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any] | None:
        """Let go of the row held so far and lock the next pending one: ``pick``'s (a
        review order's, locking as review does), else review's most seen first."""

        def next_row(conn: Connection) -> dict[str, Any] | None:
            from curation.db import curate

            conn.commit()
            self.claimed = None
            row = pick(conn) if pick is not None else None
            row = row or curate.next_pending(conn, namespace, skip)
            self.claimed = None if row is None else int(row["id"])
            return row

        return self.run(next_row)

    def close(self) -> None:
        """For good (sign-out, an ended session): no later request opens it again."""
        with self._lock:
            self.closed = True
            self._close()

    def rest(self) -> bool:
        """Close an idle connection that holds no row (the next request opens it again);
        False: it is busy or holds a row."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self.claimed is not None:
                return False
            self._close()
            return True
        finally:
            self._lock.release()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.claimed = None

    def _open(self) -> Connection:
        if self.closed:
            raise PermissionDenied("this session has ended; sign in again")
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect.open_connection(self._url)
            self.claimed = None
            if self.password_checked and not self._conn.pgconn.used_password:
                self._conn.close()
                self._conn = None
                raise PermissionDenied(NO_PASSWORD_CHECK)
            try:
                self._conn.execute(queries.get("web_session"))
                self._conn.commit()
            except psycopg.Error as exc:
                self._abandon(self._conn)
                raise _translate(self._url, exc) from exc
        return self._conn

    def _abandon(self, conn: Connection) -> None:
        """After a failure: roll back (the claim goes with it), or drop a broken connection."""
        self.claimed = None
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()
        if conn.closed or conn.broken:
            self._conn = None


def _translate(url: str, exc: psycopg.Error) -> CurationError:
    """Every database failure as one line for the page; a page never shows a traceback."""
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return Conflict("another curator has this row open right now; try again in a moment")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return CurationError("the database took too long; try a narrower filter")
    error = connect.translate(url, exc)
    if isinstance(error, PermissionDenied):
        return PermissionDenied(f"the database refused: {first_line(exc)}")
    return error or CurationError(f"the database refused: {first_line(exc)}")


def namespaces(conn: Connection) -> list[dict[str, Any]]:
    return conn.execute(queries.get("web_namespaces")).fetchall()


def production_prompt(conn: Connection, namespace: str) -> dict[str, Any] | None:
    """The production prompt most of the latest rows carried, and the model answering it."""
    return conn.execute(
        queries.for_namespace("web_production_prompt", namespace),
        {"namespace": namespace, "sample": PROMPT_SAMPLE},
    ).fetchone()


def row_filters(
    *,
    state: str | None,
    search: str | None,
    tag: dict[str, str] | None,
    model: str | None,
    since: datetime | None,
    flag: str | None = None,
) -> list[str]:
    """The named fragments of a rows page's filters (the list_* of curate.sql, feedback.sql
    and rollout.sql; web.sql's web_*)."""
    named = {
        "pending": "list_pending",
        "included": "list_included",
        "excluded": "list_excluded",
        "corrected": "web_corrected",
        "proposals": "web_proposals",
        "feedback": "list_feedback_negative",  # feedback.sql
        "disagreements": "list_disagreements",  # rollout.sql: a live student disagreed
        "flagged": "list_flag_any",  # flags.sql: any automatic flag
    }
    filters = [named[state]] if state in named else []
    filters += ["web_search"] if search else []
    filters += ["web_tag"] if tag else []
    filters += ["web_model"] if model else []
    filters += ["list_since"] if since is not None else []
    filters += ["list_flag"] if flag else []
    return filters


def rows_page(
    conn: Connection,
    namespace: str,
    filters: Sequence[str],
    params: dict[str, Any],
    after: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of rows after ``after`` (newest first), and how many match: the page's own
    rows when a first page is not full (a rare search, tag or model: the filter runs once),
    exact from the running counts when only the state filters, else counted up to COUNT_CAP."""
    from psycopg.types.json import Jsonb

    args = {**params, "namespace": namespace, "after": after, "limit": limit, "cap": COUNT_CAP}
    if args.get("search") is not None:  # a substring: % and _ are characters, not wildcards
        args["search"] = escape_like(args["search"])
    if args.get("tag") is not None:
        args["tag"] = Jsonb(args["tag"])
    paged = [*filters, "web_after"] if after is not None else list(filters)
    found = conn.execute(
        queries.for_namespace("list_rows", namespace, filters=paged, order="list_newest"), args
    ).fetchall()
    if after is None and len(found) < limit:  # the first page holds every match: no count
        return found, len(found)
    return found, _count(conn, namespace, filters, args)


def _count(conn: Connection, namespace: str, filters: Sequence[str], args: dict[str, Any]) -> int:
    state = {"list_pending": "pending", "list_included": "included", "list_excluded": "excluded"}
    state |= {"web_corrected": "corrected"}
    if len(filters) <= 1 and all(f in state for f in filters):
        counts = conn.execute(queries.get("web_state_counts"), args).fetchone()
        assert counts is not None
        return int(counts[state[filters[0]] if filters else "all"])
    found = conn.execute(
        queries.for_namespace("web_count", namespace, filters=list(filters)), args
    ).fetchone()
    return int(found["n"]) if found else 0


def neighbours(conn: Connection, namespace: str, row_id: int) -> dict[str, Any]:
    """The ids of the rows after (``next_id``) and before (``previous_id``) in page order."""
    found = conn.execute(
        queries.for_namespace("web_neighbours", namespace), {"namespace": namespace, "id": row_id}
    ).fetchone()
    return found or {"next_id": None, "previous_id": None}


def set_note(conn: Connection, namespace: str, row_id: int, note: str | None) -> bool:
    """A curator's note on a row (audited, as every curation column); False: no such row."""
    found = conn.execute(
        queries.for_namespace("web_set_note", namespace),
        {"namespace": namespace, "id": row_id, "note": note},
    ).fetchone()
    return found is not None
