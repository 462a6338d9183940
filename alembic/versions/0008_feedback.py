"""Feedback from production attached to recorded rows (issue 13).

Every recorded call carries an id (the proxy's ``X-Curation-Id``). The writer
maps each id to the row it was recorded in (``recorded_call``; a repeated
prompt's id maps to the row it repeats), in the same transaction as the row.
Feedback is kept per event in ``feedback``, keyed by call id; feedback that
comes before its call is recorded leaves a placeholder mapping (row unknown)
that the writer fills in, attaching the feedback then. Deleting a row
(``curation purge``) deletes its mappings and, with them, its feedback.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE recorded_call (
    id uuid PRIMARY KEY,
    namespace text,
    row_id bigint,
    recorded_at timestamptz,
    CONSTRAINT recorded_call_row_check CHECK ((namespace IS NULL) = (row_id IS NULL))
);
CREATE INDEX recorded_call_row_idx ON recorded_call (row_id);  -- row ids are unique across namespaces
COMMENT ON TABLE recorded_call IS 'Which row each recorded call (its X-Curation-Id) went into; written by the proxy''s writer with the row. A repeated prompt''s calls all map to its one row.';
COMMENT ON COLUMN recorded_call.id IS 'The id the proxy returned in the X-Curation-Id header.';
COMMENT ON COLUMN recorded_call.namespace IS 'Namespace of the row; NULL while only feedback names this id (the call is not recorded yet, or never will be).';
COMMENT ON COLUMN recorded_call.row_id IS 'openai_chat_completion.id of the row; NULL as namespace.';
COMMENT ON COLUMN recorded_call.recorded_at IS 'When the call was made (as the proxy saw it).';

CREATE TABLE feedback (
    id bigserial PRIMARY KEY,
    call_id uuid NOT NULL REFERENCES recorded_call (id) ON DELETE CASCADE,
    namespace text,
    row_id bigint,
    score real CONSTRAINT feedback_score_check CHECK (score BETWEEN -1 AND 1),
    label text,
    comment text,
    correction json,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feedback_row_check CHECK ((namespace IS NULL) = (row_id IS NULL))
);
CREATE INDEX feedback_call_idx ON feedback (call_id);
CREATE INDEX feedback_unattached_idx ON feedback (call_id) WHERE row_id IS NULL;  -- what the writer looks for
CREATE INDEX feedback_row_idx ON feedback (namespace, row_id);
COMMENT ON TABLE feedback IS 'Feedback from production (POST /curation/v1/feedback): many events per row; never changes the row''s response. See the view feedback_by_row.';
COMMENT ON COLUMN feedback.id IS 'Event id; a correction proposed from it shows as proposed_by = ''feedback #<id>''.';
COMMENT ON COLUMN feedback.call_id IS 'The X-Curation-Id of the call it is about.';
COMMENT ON COLUMN feedback.namespace IS 'Namespace of the row; NULL until the call is recorded (then filled in by the writer).';
COMMENT ON COLUMN feedback.row_id IS 'openai_chat_completion.id of the row; NULL as namespace.';
COMMENT ON COLUMN feedback.score IS 'From -1 (bad) to 1 (good); below 0 counts as negative, above 0 as positive.';
COMMENT ON COLUMN feedback.label IS 'A short label from the application (e.g. wrong_city).';
COMMENT ON COLUMN feedback.comment IS 'Free text from the application''s user.';
COMMENT ON COLUMN feedback.correction IS 'The answer the user says was right, as an assistant message; proposed to the curator (proposed_response) unless a teacher''s proposal is waiting.';
COMMENT ON COLUMN feedback.created_at IS 'When the feedback arrived.';

CREATE VIEW feedback_by_row AS
SELECT namespace, row_id,
       count(*) AS events,
       count(*) FILTER (WHERE score > 0) AS positive,
       count(*) FILTER (WHERE score < 0) AS negative,
       round(avg(score)::numeric, 2) AS mean_score,
       count(correction) AS corrections,
       array_remove(array_agg(DISTINCT label), NULL) AS labels,
       max(created_at) AS last_at
FROM feedback
WHERE row_id IS NOT NULL
GROUP BY namespace, row_id;
COMMENT ON VIEW feedback_by_row IS 'Feedback per row: join it to a namespace table on row_id = id (see sql/feedback.sql).';

-- A deleted row takes its call mappings, and through them its feedback, with it.
CREATE FUNCTION curation_forget_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM recorded_call WHERE row_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER forget_calls AFTER DELETE ON openai_chat_completion
    FOR EACH ROW EXECUTE FUNCTION curation_forget_calls();

GRANT SELECT ON recorded_call, feedback, feedback_by_row TO curation_curator;
"""

DOWNGRADE = r"""
DROP TRIGGER forget_calls ON openai_chat_completion;
DROP FUNCTION curation_forget_calls();
DROP VIEW feedback_by_row;
DROP TABLE feedback;
DROP TABLE recorded_call;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
