"""Curator web page (issue 15): the rows page's corrected and proposals filters, indexed.

The page lists a namespace's rows newest first, a page at a time after the last id
(keyset). Pending, included and excluded rows have partial indexes in id order
since 0006; corrected rows and rows with a waiting proposal had none, so a page of
them, and the capped count beside it, walked the whole partition when they are
few (the usual case: 0.5% of rows are corrected). Two small partial indexes, one
per filter, make each page an index range. The model and tag filters walked the
namespace newest first for a model or tag that is rare (160-200 ms at 100,000
rows): a btree on (model, id) and a GIN on tags (``jsonb_path_ops``: ``@>``)
make those an index range and a lookup. Built on the parent, so every
partition gets them, and so does every namespace created later.

The page searches answers as well as prompts: a trigram index on the answer in
force (the correction, else the recorded message's text, its tool calls, or a
Responses reply's text: the rows page's ``answer`` column, the same expression as
web.sql's ``web_search``) where the server has ``pg_trgm`` (0006 made it). A rare
term is then a bitmap of two index lookups, not a walk through every answer.

Built as 0006 builds its indexes (its helpers, loaded from its file): on the
parent ``ON ONLY``, then ``CONCURRENTLY`` on each existing partition and
attached, so recording and curating go on while a big namespace's answers are
indexed (minutes at a million long answers: README "The web page"); an
interrupted upgrade picks up where it stopped.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

from sqlalchemy import text

from alembic import op

log = logging.getLogger("alembic.runtime.migration")

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PARENT = "openai_chat_completion"
# The answer a rows page shows and searches (curate.sql's list_rows ``answer``); web.sql's
# web_search must read exactly this for the planner to use the index.
ANSWER = (
    "coalesce(corrected_response->>'content', response->'choices'->0->'message'->>'content',"
    " (response->'choices'->0->'message'->'tool_calls')::text, curation_response_text(response))"
)
# suffix -> (what follows ON <table>, the comment); the parent's is openai_chat_completion_<suffix>_idx
INDEXES = {
    "corrected": (
        "(id) WHERE corrected_response IS NOT NULL",
        "The web page's corrected rows, newest first (keyset pages).",
    ),
    "proposed": (
        "(id) WHERE proposed_response IS NOT NULL",
        "The web page's rows with a proposal waiting (curation relabel, feedback), newest first.",
    ),
    "model": (
        "(model, id)",
        "The web page's model filter, newest first: a rare model is an index range.",
    ),
    "tags": (
        "USING gin (tags jsonb_path_ops)",
        """The web page's tag filter, and psql's (tags @> '{"team": "a"}'): a rare tag is a lookup.""",
    ),
}
TRIGRAM = {
    "answer_trgm": (
        f"USING gin (({ANSWER}) gin_trgm_ops)",
        "The web page's search in answers (the answer in force), beside 0006's prompt_trgm.",
    )
}
NO_TRIGRAM = (
    "gin_trgm_ops is not available: the web page's search in answers will scan the namespace. "
    "To index it later (CREATE EXTENSION pg_trgm first): CREATE INDEX "
    "openai_chat_completion_answer_trgm_idx ON openai_chat_completion %s"
)


def upgrade() -> None:
    indexes = dict(INDEXES)
    if _trigram_ready():
        indexes |= TRIGRAM
    else:
        log.warning(NO_TRIGRAM, TRIGRAM["answer_trgm"][0])
    for suffix, (definition, comment) in indexes.items():
        name = f"{PARENT}_{suffix}_idx"
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON ONLY {PARENT} {definition}")
        quoted = comment.replace("'", "''")
        op.execute(f"COMMENT ON INDEX {name} IS '{quoted}'")
    built = _revision_0006()
    partitions = built._partitions()
    if partitions:  # (a fresh database's parent indexes are valid already)
        with built._outside_transaction() as conn:
            for partition in partitions:
                for suffix, (definition, _) in indexes.items():
                    built._build_on_partition(conn, partition, suffix, definition)
                conn.execute(text(f"ANALYZE {built._quote(partition)}"))  # the answer's statistics


def downgrade() -> None:
    # Dropping a parent's index drops its partitions' too.
    for suffix in (*INDEXES, *TRIGRAM):
        op.execute(f"DROP INDEX IF EXISTS {PARENT}_{suffix}_idx")


def _trigram_ready() -> bool:
    found = op.get_bind().execute(
        text(
            "SELECT 1 FROM pg_opclass WHERE opcname = 'gin_trgm_ops' AND pg_opclass_is_visible(oid)"
        )
    )
    return found.scalar() is not None


def _revision_0006() -> ModuleType:
    """Revision 0006, for its concurrent build (commit, build each partition's index
    CONCURRENTLY, attach it to the parent's): one way to do it, not two."""
    path = Path(__file__).with_name("0006_curator_indexes.py")
    spec = importlib.util.spec_from_file_location("curation_revision_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
