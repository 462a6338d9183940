"""Curator queries at a million rows: one index per access path, running counts (issue 17).

The indexes are per partition, so none repeats the namespace: a curator's own
query in psql (``SELECT ... FROM locations_openai_chat_completion WHERE included
IS NULL AND excluded IS NULL ORDER BY times_seen DESC, id``) uses them as the
CLI's do. The CLI's queries (``curation/db/sql/curate.sql``) still name their
namespace (``namespace = $1``), which the primary key, (namespace, id), needs:

- newest first: the primary key; pending, included and excluded rows newest
  first: a partial index each (the included rows' carries their namespace and
  version, so ``stats`` finds those no job trained on from the index alone);
- most seen first: ``seen`` for all rows, ``pending_seen`` for pending rows;
- review's and relabel's next pending row (most seen, then oldest first):
  ``pending_next``;
- ``list --search`` / ``--search`` decisions: a trigram index on the prompt, when
  the server has ``pg_trgm`` (PostgreSQL's contrib; without it search scans).

Each index is made on the parent with ``ON ONLY`` (instant, not yet valid),
then built ``CONCURRENTLY`` on every existing partition, so the proxy keeps
recording and curators keep working while it builds, and attached; a namespace
created later gets every index of the parent with its table. CREATE INDEX
CONCURRENTLY refuses a transaction block, and env.py runs all revisions in one
transaction that it opened itself (which alembic's ``autocommit_block`` cannot
step out of), so this revision commits what came before, builds outside a
transaction, then opens a new one for the rest. Interrupted, it leaves
``alembic_version`` at 0005 and a rerun picks up where it stopped (an invalid
half-built index is dropped and built again).

``stats`` and review's progress count every row of a namespace; a scan of a
million rows takes most of a second, so ``curation_counts`` keeps running counts
per namespace and model instead: statement triggers (on the parent for the
proxy's inserts, on each partition for what curators and purge do) add each
statement's change as a delta row in the same transaction, and every hundredth
statement or so folds the deltas into one row per key. Readers sum the rows.
The counts start from one scan while writers wait (SHARE lock), so none is
lost between the scan and the triggers; ``curation_recount(namespace)`` redoes
that scan for one namespace, should its rows ever change with triggers off.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy
from sqlalchemy import text

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

PARENT = "openai_chat_completion"
PENDING = "included IS NULL AND excluded IS NULL"

# suffix -> what follows ON <table>; the parent's index is openai_chat_completion_<suffix>_idx
INDEXES = {
    "seen": "(times_seen, id)",
    "pending_seen": f"(times_seen, id) WHERE {PENDING}",
    "pending_next": f"(times_seen DESC, id) WHERE {PENDING}",
    "pending": f"(id) WHERE {PENDING}",
    "included": "(id) INCLUDE (namespace, version) WHERE included IS NOT NULL AND excluded IS NULL",
    "excluded": "(id) WHERE excluded IS NOT NULL",
}
TRIGRAM = {"prompt_trgm": "USING gin ((user_prompt::text) gin_trgm_ops)"}

# How often a search term occurs decides whether its first page is read in the list's order
# (a frequent term) or through the trigram index (a rare one), and a wrong guess costs 5-10x.
# With the default 100 histogram entries a term in 1% of prompts was guessed absent 2 times in 5;
# with 1000 it was not (ANALYZE then samples 300,000 rows instead of 30,000).
PROMPT_STATISTICS = (
    "ALTER TABLE openai_chat_completion ALTER COLUMN user_prompt SET STATISTICS 1000"
)

NO_TRIGRAM = (
    "pg_trgm is not available on this server (%s): `curation list --search` will scan the "
    "namespace's table. To index it later: CREATE EXTENSION pg_trgm; CREATE INDEX "
    "openai_chat_completion_prompt_trgm_idx ON openai_chat_completion "
    "USING gin ((user_prompt::text) gin_trgm_ops);"
)

COUNTS = r"""
LOCK TABLE openai_chat_completion IN SHARE MODE;  -- writers wait until the counts are in place

CREATE TABLE curation_counts (
    namespace text NOT NULL,
    model text,
    distinct_prompts bigint NOT NULL,
    calls bigint NOT NULL,
    pending bigint NOT NULL,
    included bigint NOT NULL,
    excluded bigint NOT NULL,
    corrected bigint NOT NULL,
    tokens_in bigint NOT NULL,
    tokens_out bigint NOT NULL
);
CREATE INDEX curation_counts_namespace_idx ON curation_counts (namespace);
COMMENT ON TABLE curation_counts IS 'Running counts of the captured rows per namespace and model, kept by statement triggers: several rows per key, to be summed (SELECT namespace, model, sum(calls) ... GROUP BY 1, 2).';
COMMENT ON COLUMN curation_counts.distinct_prompts IS 'Rows (distinct user prompts).';
COMMENT ON COLUMN curation_counts.calls IS 'Calls: the sum of times_seen.';
COMMENT ON COLUMN curation_counts.tokens_in IS 'Prompt tokens of all calls (prompt_tokens x times_seen).';
COMMENT ON COLUMN curation_counts.tokens_out IS 'Completion tokens of all calls.';
GRANT SELECT ON curation_counts TO curation_curator;

-- One row per key for all the deltas so far; one folder at a time, the others go on.
CREATE FUNCTION curation_fold_counts() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
BEGIN
    IF pg_try_advisory_xact_lock(727002) THEN
        WITH gone AS (DELETE FROM curation_counts RETURNING *)
        INSERT INTO curation_counts
        SELECT namespace, model, sum(distinct_prompts), sum(calls), sum(pending), sum(included),
               sum(excluded), sum(corrected), sum(tokens_in), sum(tokens_out)
        FROM gone
        GROUP BY namespace, model
        HAVING sum(distinct_prompts) <> 0;
    END IF;
END $$;

-- A statement's change to the counts: its new rows counted in, its old rows out.
-- SECURITY DEFINER: curators change rows but may not write the counts themselves.
CREATE FUNCTION curation_count_rows() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    counted text := 'namespace, model, times_seen, included, excluded, prompt_tokens, '
                    'completion_tokens, corrected_response IS NOT NULL AS corrected';
    images text := CASE TG_OP
        WHEN 'INSERT' THEN format('SELECT 1 AS sign, %s FROM new_rows', counted)
        WHEN 'DELETE' THEN format('SELECT -1 AS sign, %s FROM old_rows', counted)
        ELSE format('SELECT 1 AS sign, %s FROM new_rows UNION ALL SELECT -1, %s FROM old_rows',
                    counted, counted) END;
BEGIN
    EXECUTE 'INSERT INTO curation_counts
        SELECT * FROM (
            SELECT namespace, model,
                   sum(sign) AS distinct_prompts,
                   sum(sign * times_seen) AS calls,
                   coalesce(sum(sign) FILTER (WHERE included IS NULL AND excluded IS NULL), 0) AS pending,
                   coalesce(sum(sign) FILTER (WHERE included IS NOT NULL AND excluded IS NULL), 0) AS included,
                   coalesce(sum(sign) FILTER (WHERE excluded IS NOT NULL), 0) AS excluded,
                   coalesce(sum(sign) FILTER (WHERE corrected), 0) AS corrected,
                   coalesce(sum(sign * prompt_tokens::bigint * times_seen), 0) AS tokens_in,
                   coalesce(sum(sign * completion_tokens::bigint * times_seen), 0) AS tokens_out
            FROM (' || images || ') AS r
            GROUP BY namespace, model) AS k
        WHERE (distinct_prompts, calls, pending, included, excluded, corrected, tokens_in, tokens_out)
              <> (0, 0, 0, 0, 0, 0, 0, 0)';
    IF random() < 0.01 THEN
        PERFORM curation_fold_counts();
    END IF;
    RETURN NULL;
END $$;

-- The parent's triggers see statements on the parent (the proxy's inserts), a
-- partition's those on the partition (curators, purge): never both.
CREATE FUNCTION curation_count_table(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER count_inserts AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION curation_count_rows()', tbl);
    EXECUTE format('CREATE TRIGGER count_updates AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION curation_count_rows()', tbl);
    EXECUTE format('CREATE TRIGGER count_deletes AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION curation_count_rows()', tbl);
END $$;
SELECT curation_count_table('openai_chat_completion');
SELECT curation_count_table(inhrelid::regclass) FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass;

CREATE OR REPLACE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
    PERFORM curation_grant_curator(tbl);
    PERFORM curation_guard_truncate(tbl);
    PERFORM curation_count_table(tbl);
    -- a partition does not take its parent's statistics target: see PROMPT_STATISTICS
    EXECUTE format('ALTER TABLE %s ALTER COLUMN user_prompt SET STATISTICS 1000', tbl);
END $$;

-- A namespace's counts from a scan of its rows, its writers waiting meanwhile: how the
-- counts start, and the repair after rows changed with triggers off (a data-only restore
-- with --disable-triggers, session_replication_role = replica) or a table dropped by hand.
CREATE FUNCTION curation_recount(p_namespace text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
BEGIN
    IF to_regclass(quote_ident(p_namespace || '_openai_chat_completion')) IS NOT NULL THEN
        EXECUTE format('LOCK TABLE %I IN SHARE MODE', p_namespace || '_openai_chat_completion');
    END IF;
    DELETE FROM curation_counts WHERE namespace = p_namespace;
    INSERT INTO curation_counts
    SELECT namespace, model, count(*), sum(times_seen),
           count(*) FILTER (WHERE included IS NULL AND excluded IS NULL),
           count(*) FILTER (WHERE included IS NOT NULL AND excluded IS NULL),
           count(*) FILTER (WHERE excluded IS NOT NULL),
           count(*) FILTER (WHERE corrected_response IS NOT NULL),
           coalesce(sum(prompt_tokens::bigint * times_seen), 0),
           coalesce(sum(completion_tokens::bigint * times_seen), 0)
    FROM openai_chat_completion
    WHERE namespace = p_namespace
    GROUP BY namespace, model;
END $$;
REVOKE EXECUTE ON FUNCTION curation_recount(text), curation_fold_counts() FROM PUBLIC;
COMMENT ON FUNCTION curation_recount(text) IS
    'Recount a namespace''s rows into curation_counts (its writers wait meanwhile): SELECT curation_recount(''locations'').';

SELECT curation_recount(name) FROM namespace;
"""

DROP_COUNTS = r"""
CREATE OR REPLACE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
    PERFORM curation_grant_curator(tbl);
    PERFORM curation_guard_truncate(tbl);
END $$;
DO $$
DECLARE
    tbl regclass;
BEGIN
    FOR tbl IN SELECT 'openai_chat_completion'::regclass
               UNION ALL SELECT inhrelid::regclass FROM pg_inherits
               WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS count_inserts ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS count_updates ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS count_deletes ON %s', tbl);
    END LOOP;
END $$;
DROP FUNCTION curation_recount(text);
DROP FUNCTION curation_count_table(regclass);
DROP FUNCTION curation_count_rows();
DROP FUNCTION curation_fold_counts();
DROP TABLE curation_counts;
"""


def upgrade() -> None:
    indexes = dict(INDEXES)
    if _trigram_ready():
        indexes |= TRIGRAM
    op.execute(PROMPT_STATISTICS)
    for suffix, definition in indexes.items():
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {PARENT}_{suffix}_idx ON ONLY {PARENT} {definition}"
        )
    partitions = _partitions()
    if partitions:  # (a fresh database's parent indexes are valid already)
        with _outside_transaction() as conn:
            for partition in partitions:
                for suffix, definition in indexes.items():
                    _build_on_partition(conn, partition, suffix, definition)
                # statistics of the trigram index's expression, which the planner needs to
                # weigh a search against walking an order
                conn.execute(text(f"ANALYZE {_quote(partition)}"))
    op.execute(COUNTS)  # in the transaction that records revision 0006


def downgrade() -> None:
    op.execute(DROP_COUNTS)
    op.execute("ALTER TABLE openai_chat_completion ALTER COLUMN user_prompt SET STATISTICS -1")
    # Dropping a parent's index drops its partitions' too. pg_trgm stays, as citext
    # does: other objects of the database may use it.
    for suffix in (*INDEXES, *TRIGRAM):
        op.execute(f"DROP INDEX IF EXISTS {PARENT}_{suffix}_idx")


def _trigram_ready() -> bool:
    """Create pg_trgm where the server has it and we may; False (with a warning) if not."""
    conn = op.get_bind()
    available = conn.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    ).scalar()
    if available is None:
        log.warning(NO_TRIGRAM, "not installed")
        return False
    try:
        with conn.begin_nested():  # a savepoint: a refusal must not abort the upgrade
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sqlalchemy.exc.DBAPIError as exc:
        log.warning(NO_TRIGRAM, str(exc.orig or exc).strip().splitlines()[0])
        return False
    visible = conn.execute(
        text(
            "SELECT 1 FROM pg_opclass WHERE opcname = 'gin_trgm_ops' AND pg_opclass_is_visible(oid)"
        )
    ).scalar()
    if visible is None:
        log.warning(NO_TRIGRAM, "gin_trgm_ops is not on the search_path")
        return False
    return True


def _partitions() -> list[str]:
    found = op.get_bind().execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            f" WHERE i.inhparent = '{PARENT}'::regclass ORDER BY c.relname"
        )
    )
    return [str(r[0]) for r in found]


@contextmanager
def _outside_transaction() -> Iterator[sqlalchemy.Connection]:
    """Commit the migration so far and run in autocommit, then start a new transaction."""
    conn = op.get_bind()
    lock_timeout = conn.execute(text("SHOW lock_timeout")).scalar()
    statement_timeout = conn.execute(text("SHOW statement_timeout")).scalar()
    conn.commit()
    level = conn.get_isolation_level()
    conn.execution_options(isolation_level="AUTOCOMMIT")
    # A build on a big table takes minutes; waiting for a curator's open review
    # transaction to end blocks nobody (CONCURRENTLY takes no lock writers wait on).
    conn.execute(text("SET statement_timeout = 0"))
    conn.execute(text("SET lock_timeout = '10min'"))
    try:
        yield conn
    finally:
        conn.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": lock_timeout})
        conn.execute(
            text("SELECT set_config('statement_timeout', :v, false)"), {"v": statement_timeout}
        )
        conn.commit()  # ends the "transaction" SQLAlchemy began on its own in autocommit
        conn.execution_options(isolation_level=level)


def _build_on_partition(
    conn: sqlalchemy.Connection, partition: str, suffix: str, definition: str
) -> None:
    """Build one index of the parent on one partition, concurrently, and attach it."""
    parent_index = f"{PARENT}_{suffix}_idx"
    attached = conn.execute(
        text(
            "SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(:parent) AND x.indrelid = to_regclass(quote_ident(:tbl))"
        ),
        {"parent": parent_index, "tbl": partition},
    ).scalar()
    if attached:
        return
    name = _index_name(partition, suffix)
    valid = conn.execute(
        text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(quote_ident(:name))"),
        {"name": name},
    ).scalar()
    if valid is False:  # left half-built by an interrupted run
        conn.execute(text(f"DROP INDEX CONCURRENTLY {_quote(name)}"))
    if valid is not True:
        conn.execute(
            text(f"CREATE INDEX CONCURRENTLY {_quote(name)} ON {_quote(partition)} {definition}")
        )
    conn.execute(text(f"ALTER INDEX {parent_index} ATTACH PARTITION {_quote(name)}"))


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _index_name(partition: str, suffix: str) -> str:
    """``<partition>_<suffix>_idx`` within PostgreSQL's 63 bytes. A partition is
    ``<namespace>_openai_chat_completion`` with at most 40 characters of namespace, which
    every suffix here leaves whole, so two namespaces never share a name."""
    tail = f"_{suffix}_idx"
    return partition[: 63 - len(tail)] + tail
