"""Automatic flags (issue 16): what is wrong with a recorded answer, and who accepted it.

``flags`` holds the reasons ``curation/capture/flags.py`` found when the row was
recorded (truncated, content_filter, empty, refusal, invalid_json, tool_args,
model_mismatch): empty when none, NULL for rows recorded before this revision
until ``curation flags NS --backfill`` computes them. Export skips a flagged row
unless a curator included it after seeing its flags (``flags_accepted_by`` /
``flags_accepted_at``). A partial index holds only the flagged rows (few), so
``curation list NS --flag REASON`` and the counts in ``curation stats`` read
those and never the whole namespace; another holds the rows still to backfill.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = (
    "included, excluded, corrected_response, note, tags, proposed_response, proposed_by, "
    "proposed_at"
)

UPGRADE = r"""
ALTER TABLE openai_chat_completion
    ADD COLUMN flags text[],
    ADD COLUMN flags_accepted_by text,
    ADD COLUMN flags_accepted_at timestamptz;
CREATE INDEX openai_chat_completion_flagged_idx
    ON openai_chat_completion (namespace, id) WHERE flags <> '{}';
CREATE INDEX openai_chat_completion_flags_unset_idx
    ON openai_chat_completion (namespace, id) WHERE flags IS NULL;

DO $$
DECLARE
    part regclass;
BEGIN
    COMMENT ON COLUMN openai_chat_completion.flags IS 'Why the recorded answer should not train as it is, found when it was recorded: truncated, content_filter, empty, refusal, invalid_json, tool_args, model_mismatch (README: Automatic flags). Empty: none; NULL: not computed yet (curation flags NS --backfill).';
    COMMENT ON COLUMN openai_chat_completion.flags_accepted_by IS 'The curator who included the row after seeing its flags (curation include --accept-flags, or review); export skips flagged rows without one.';
    COMMENT ON COLUMN openai_chat_completion.flags_accepted_at IS 'When a curator accepted the row''s flags.';
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        PERFORM curation_copy_comments(part);
        EXECUTE format('GRANT UPDATE (flags_accepted_by, flags_accepted_at) ON %s TO curation_curator', part);
    END LOOP;
END $$;
GRANT UPDATE (flags_accepted_by, flags_accepted_at) ON openai_chat_completion TO curation_curator;
-- Every CLI command checks the schema's revision first: a curator login must read it.
GRANT SELECT ON alembic_version TO curation_curator;

CREATE OR REPLACE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (COLUMNS, flags_accepted_by, flags_accepted_at) ON %s TO curation_curator', tbl);
END $$;
""".replace("COLUMNS", COLUMNS)

DOWNGRADE = r"""
REVOKE SELECT ON alembic_version FROM curation_curator;
CREATE OR REPLACE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (COLUMNS) ON %s TO curation_curator', tbl);
END $$;
DROP INDEX IF EXISTS openai_chat_completion_flags_unset_idx;
DROP INDEX IF EXISTS openai_chat_completion_flagged_idx;
ALTER TABLE openai_chat_completion
    DROP COLUMN flags_accepted_at,
    DROP COLUMN flags_accepted_by,
    DROP COLUMN flags;
""".replace("COLUMNS", COLUMNS)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
