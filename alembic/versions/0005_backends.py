"""Train anywhere: job backends, local job state and events, student endpoints.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE fine_tune_job
    ADD COLUMN backend text NOT NULL DEFAULT 'openai',
    ADD COLUMN result_location text,
    ADD COLUMN checkpoint_dir text,
    ADD COLUMN worker text,
    ADD COLUMN heartbeat_at timestamptz,
    ADD COLUMN started_at timestamptz,
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN fine_tune_job.backend IS 'Who trains it: openai (any OpenAI-shaped jobs API), together, or local (TRL + PEFT LoRA).';
COMMENT ON COLUMN fine_tune_job.result_location IS 'Where the trained result lives: the OpenAI-compatible base URL a hosted model answers at, or the local LoRA adapter directory (the model name is in fine_tuned_model).';
COMMENT ON COLUMN fine_tune_job.checkpoint_dir IS 'Local backend: the directory of the job''s checkpoints (a restarted worker resumes from the last one).';
COMMENT ON COLUMN fine_tune_job.worker IS 'Local backend: the worker (host:pid) running the job.';
COMMENT ON COLUMN fine_tune_job.heartbeat_at IS 'Local backend: the running worker''s last sign of life.';
COMMENT ON COLUMN fine_tune_job.started_at IS 'When training started.';
COMMENT ON COLUMN fine_tune_job.cancel_requested_at IS 'When a cancel was asked for; the worker stops within seconds.';
COMMENT ON COLUMN fine_tune_job.attempts IS 'Local backend: how many times a worker has started the job.';

CREATE TABLE fine_tune_event (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES fine_tune_job (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    level text NOT NULL DEFAULT 'info',
    message text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX fine_tune_event_job_idx ON fine_tune_event (job_id, id);
COMMENT ON TABLE fine_tune_event IS 'Events of locally trained jobs: one per logged step (train loss, eval loss, tokens/s) and per state change.';
COMMENT ON COLUMN fine_tune_event.job_id IS 'The job.';
COMMENT ON COLUMN fine_tune_event.created_at IS 'When it happened.';
COMMENT ON COLUMN fine_tune_event.level IS 'info, warn or error.';
COMMENT ON COLUMN fine_tune_event.message IS 'One readable line.';
COMMENT ON COLUMN fine_tune_event.data IS 'The numbers: step, epoch, train_loss, eval_loss, tokens_per_second.';
GRANT SELECT ON fine_tune_event TO curation_curator;

ALTER TABLE namespace
    ADD COLUMN backend text,
    ADD COLUMN serve_endpoint text,
    ADD COLUMN serve_endpoint_key_env text;
COMMENT ON COLUMN namespace.backend IS 'Default training backend (openai, together, local); NULL: openai.';
COMMENT ON COLUMN namespace.serve_endpoint IS 'Base URL of the OpenAI-compatible endpoint serving serve_model (NULL: the proxy''s upstream).';
COMMENT ON COLUMN namespace.serve_endpoint_key_env IS 'Name of the environment variable holding the endpoint''s API key (never the key itself).';

ALTER TABLE openai_chat_completion ADD COLUMN fallback_from text;
DO $$
DECLARE
    part regclass;
BEGIN
    COMMENT ON COLUMN openai_chat_completion.fallback_from IS 'The student model that failed before the client got a byte; the teacher answered this call instead.';
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        PERFORM curation_copy_comments(part);
    END LOOP;
END $$;
"""

DOWNGRADE = r"""
ALTER TABLE openai_chat_completion DROP COLUMN fallback_from;
ALTER TABLE namespace
    DROP COLUMN serve_endpoint_key_env,
    DROP COLUMN serve_endpoint,
    DROP COLUMN backend;
DROP TABLE fine_tune_event;
ALTER TABLE fine_tune_job
    DROP COLUMN attempts,
    DROP COLUMN cancel_requested_at,
    DROP COLUMN started_at,
    DROP COLUMN heartbeat_at,
    DROP COLUMN worker,
    DROP COLUMN checkpoint_dir,
    DROP COLUMN result_location,
    DROP COLUMN backend;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
