"""Curator web page (issue 15): the rows page's corrected and proposals filters, indexed.

The page lists a namespace's rows newest first, a page at a time after the last id
(keyset). Pending, included and excluded rows have partial indexes in id order
since 0006; corrected rows and rows with a waiting proposal had none, so a page of
them, and the capped count beside it, walked the whole partition when they are
few (the usual case: 0.5% of rows are corrected). Two small partial indexes, one
per filter, make each page an index range. Built on the parent, so every
partition gets them, and so does every namespace created later.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

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

DOWNGRADE = r"""
DROP INDEX openai_chat_completion_proposed_idx;
DROP INDEX openai_chat_completion_corrected_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
