"""Curator web page (issue 15): the rows page's corrected and proposals filters, indexed.

The page lists a namespace's rows newest first, a page at a time after the last id
(keyset). Pending, included and excluded rows have partial indexes in id order
since 0006; corrected rows and rows with a waiting proposal had none, so a page of
them, and the capped count beside it, walked the whole partition when they are
few (the usual case: 0.5% of rows are corrected). Two small partial indexes, one
per filter, make each page an index range. Built on the parent, so every
partition gets them, and so does every namespace created later.

The page searches answers as well as prompts: a trigram index on the answer in
force (the correction, else the recorded message's text, its tool calls, or a
Responses reply's text: the rows page's ``answer`` column, the same expression as
web.sql's ``web_search``) where the server has ``pg_trgm`` (0006 made it). A rare
term is then a bitmap of two index lookups, not a walk through every answer.

Built here without CONCURRENTLY: recording into a namespace waits while its
partition's index builds (about 4 s per 100,000 rows measured, README "The web
page"). On a large table build it first, per partition and while recording
goes on (``CREATE INDEX CONCURRENTLY ... ON locations_openai_chat_completion
USING gin ((ANSWER) gin_trgm_ops)``): this revision then attaches those indexes
instead of building them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import text

log = logging.getLogger("alembic.runtime.migration")

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE INDEX openai_chat_completion_corrected_idx ON openai_chat_completion (id)
    WHERE corrected_response IS NOT NULL;
COMMENT ON INDEX openai_chat_completion_corrected_idx IS 'The web page''s corrected rows, newest first (keyset pages).';
CREATE INDEX openai_chat_completion_proposed_idx ON openai_chat_completion (id)
    WHERE proposed_response IS NOT NULL;
COMMENT ON INDEX openai_chat_completion_proposed_idx IS 'The web page''s rows with a proposal waiting (curation relabel, feedback), newest first.';
"""

# The answer a rows page shows and searches (curate.sql's list_rows ``answer``); web.sql's
# web_search must read exactly this for the planner to use the index.
ANSWER = (
    "coalesce(corrected_response->>'content', response->'choices'->0->'message'->>'content',"
    " (response->'choices'->0->'message'->'tool_calls')::text, curation_response_text(response))"
)
ANSWER_INDEX = f"""
CREATE INDEX openai_chat_completion_answer_trgm_idx ON openai_chat_completion
    USING gin (({ANSWER}) gin_trgm_ops);
COMMENT ON INDEX openai_chat_completion_answer_trgm_idx IS 'The web page''s search in answers (the answer in force), beside 0006''s prompt_trgm.';
"""
NO_TRIGRAM = (
    "gin_trgm_ops is not available: the web page's search in answers will scan the namespace. "
    "To index it later (as a superuser: CREATE EXTENSION pg_trgm):%s"
)

DOWNGRADE = r"""
DROP INDEX IF EXISTS openai_chat_completion_answer_trgm_idx;
DROP INDEX openai_chat_completion_proposed_idx;
DROP INDEX openai_chat_completion_corrected_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    trigram = op.get_bind().execute(
        text(
            "SELECT 1 FROM pg_opclass WHERE opcname = 'gin_trgm_ops' AND pg_opclass_is_visible(oid)"
        )
    )
    if trigram.scalar() is None:
        log.warning(NO_TRIGRAM, ANSWER_INDEX)
        return
    op.execute(ANSWER_INDEX)


def downgrade() -> None:
    op.execute(DOWNGRADE)
