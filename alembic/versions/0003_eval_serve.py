"""Evaluate, relabel and serve: proposals, rewrite markers, eval runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = {
    "rewritten": "True when the proxy served this call with the namespace's fine-tuned model and short prompt: the student's answer, not exported by default.",
    "proposed_response": "A teacher model's proposed answer (curation relabel), waiting for a curator to accept or reject it.",
    "proposed_by": "The teacher model that proposed proposed_response.",
    "proposed_at": "When it was proposed.",
}

UPGRADE = r"""
ALTER TABLE openai_chat_completion
    ADD COLUMN rewritten boolean NOT NULL DEFAULT false,
    ADD COLUMN proposed_response json,
    ADD COLUMN proposed_by text,
    ADD COLUMN proposed_at timestamptz;

-- comments on the parent, copied to every partition (new ones copy them anyway)
DO $$
DECLARE
    col record;
    part regclass;
BEGIN
    FOR col IN SELECT * FROM (VALUES %(comments)s) AS c(name, text) LOOP
        EXECUTE format('COMMENT ON COLUMN openai_chat_completion.%%I IS %%L', col.name, col.text);
    END LOOP;
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        PERFORM curation_copy_comments(part);
        EXECUTE format('GRANT UPDATE (proposed_response, proposed_by, proposed_at) ON %%s TO curation_curator', part);
    END LOOP;
END $$;
GRANT UPDATE (proposed_response, proposed_by, proposed_at) ON openai_chat_completion TO curation_curator;

CREATE OR REPLACE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %%s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (included, excluded, corrected_response, note, tags, reviewed_by, reviewed_at, proposed_response, proposed_by, proposed_at) ON %%s TO curation_curator', tbl);
END $$;

CREATE OR REPLACE FUNCTION curation_audit_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    who text := curation_actor();
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO curation_audit (namespace, row_id, column_name, old_value, new_value, changed_by)
        VALUES (OLD.namespace, OLD.id, 'row', OLD.user_prompt::text, NULL, who);
        RETURN OLD;
    END IF;
    INSERT INTO curation_audit (namespace, row_id, column_name, old_value, new_value, changed_by)
    SELECT NEW.namespace, NEW.id, c.name, c.old, c.new, who
    FROM (VALUES
        ('included', OLD.included::text, NEW.included::text),
        ('excluded', OLD.excluded::text, NEW.excluded::text),
        ('corrected_response', OLD.corrected_response::text, NEW.corrected_response::text),
        ('proposed_response', OLD.proposed_response::text, NEW.proposed_response::text),
        ('note', OLD.note, NEW.note),
        ('tags', CASE WHEN current_setting('curation.source', true) = 'proxy' THEN NULL ELSE OLD.tags::text END,
                 CASE WHEN current_setting('curation.source', true) = 'proxy' THEN NULL ELSE NEW.tags::text END)
    ) AS c(name, old, new)
    WHERE c.old IS DISTINCT FROM c.new;
    RETURN NEW;
END $$;
DROP TRIGGER audit_change ON openai_chat_completion;
CREATE TRIGGER audit_change AFTER UPDATE ON openai_chat_completion
    FOR EACH ROW
    WHEN (OLD.included IS DISTINCT FROM NEW.included OR OLD.excluded IS DISTINCT FROM NEW.excluded
          OR OLD.corrected_response::text IS DISTINCT FROM NEW.corrected_response::text
          OR OLD.proposed_response::text IS DISTINCT FROM NEW.proposed_response::text
          OR OLD.note IS DISTINCT FROM NEW.note OR OLD.tags IS DISTINCT FROM NEW.tags)
    EXECUTE FUNCTION curation_audit_change();

CREATE TABLE eval_run (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL REFERENCES namespace (name),
    dataset_id bigint REFERENCES dataset (id),
    rows_source text NOT NULL,
    compare text NOT NULL,
    baseline text,
    models text[] NOT NULL,
    summary jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX eval_run_namespace_idx ON eval_run (namespace, created_at);
COMMENT ON TABLE eval_run IS 'One `curation eval`: models compared on held-out curated rows.';
COMMENT ON COLUMN eval_run.id IS 'Run id.';
COMMENT ON COLUMN eval_run.namespace IS 'The namespace evaluated.';
COMMENT ON COLUMN eval_run.dataset_id IS 'The dataset whose validation split was used (NULL for other row sets).';
COMMENT ON COLUMN eval_run.rows_source IS 'validation, all-included, or the ids given.';
COMMENT ON COLUMN eval_run.compare IS 'exact, json, or the comparator command.';
COMMENT ON COLUMN eval_run.baseline IS 'The baseline model (called with the production prompt).';
COMMENT ON COLUMN eval_run.models IS 'All models called, baseline included.';
COMMENT ON COLUMN eval_run.summary IS 'Per model: agreement, latency, tokens, cost per 1,000 calls, savings.';
COMMENT ON COLUMN eval_run.created_at IS 'When it ran.';

CREATE TABLE eval_result (
    run_id bigint NOT NULL REFERENCES eval_run (id) ON DELETE CASCADE,
    row_id bigint NOT NULL,
    model text NOT NULL,
    matched boolean,
    answer text,
    error text,
    latency_ms real,
    prompt_tokens integer,
    completion_tokens integer,
    PRIMARY KEY (run_id, model, row_id)
);
COMMENT ON TABLE eval_result IS 'Each row x model of an eval run.';
COMMENT ON COLUMN eval_result.run_id IS 'The run.';
COMMENT ON COLUMN eval_result.row_id IS 'openai_chat_completion.id of the row.';
COMMENT ON COLUMN eval_result.model IS 'The model called.';
COMMENT ON COLUMN eval_result.matched IS 'Whether the answer agreed with the curated one (NULL: the call failed).';
COMMENT ON COLUMN eval_result.answer IS 'The model''s answer text.';
COMMENT ON COLUMN eval_result.error IS 'The call''s error, if it failed.';
COMMENT ON COLUMN eval_result.latency_ms IS 'Call latency in milliseconds.';
COMMENT ON COLUMN eval_result.prompt_tokens IS 'usage.prompt_tokens.';
COMMENT ON COLUMN eval_result.completion_tokens IS 'usage.completion_tokens.';
GRANT SELECT ON eval_run, eval_result TO curation_curator;
"""

DOWNGRADE = r"""
DROP TABLE eval_result;
DROP TABLE eval_run;
CREATE OR REPLACE FUNCTION curation_audit_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    who text := curation_actor();
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO curation_audit (namespace, row_id, column_name, old_value, new_value, changed_by)
        VALUES (OLD.namespace, OLD.id, 'row', OLD.user_prompt::text, NULL, who);
        RETURN OLD;
    END IF;
    INSERT INTO curation_audit (namespace, row_id, column_name, old_value, new_value, changed_by)
    SELECT NEW.namespace, NEW.id, c.name, c.old, c.new, who
    FROM (VALUES
        ('included', OLD.included::text, NEW.included::text),
        ('excluded', OLD.excluded::text, NEW.excluded::text),
        ('corrected_response', OLD.corrected_response::text, NEW.corrected_response::text),
        ('note', OLD.note, NEW.note),
        ('tags', CASE WHEN current_setting('curation.source', true) = 'proxy' THEN NULL ELSE OLD.tags::text END,
                 CASE WHEN current_setting('curation.source', true) = 'proxy' THEN NULL ELSE NEW.tags::text END)
    ) AS c(name, old, new)
    WHERE c.old IS DISTINCT FROM c.new;
    RETURN NEW;
END $$;
DROP TRIGGER audit_change ON openai_chat_completion;
CREATE TRIGGER audit_change AFTER UPDATE ON openai_chat_completion
    FOR EACH ROW
    WHEN (OLD.included IS DISTINCT FROM NEW.included OR OLD.excluded IS DISTINCT FROM NEW.excluded
          OR OLD.corrected_response::text IS DISTINCT FROM NEW.corrected_response::text
          OR OLD.note IS DISTINCT FROM NEW.note OR OLD.tags IS DISTINCT FROM NEW.tags)
    EXECUTE FUNCTION curation_audit_change();
CREATE OR REPLACE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %%s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (included, excluded, corrected_response, note, tags, reviewed_by, reviewed_at) ON %%s TO curation_curator', tbl);
END $$;
ALTER TABLE openai_chat_completion
    DROP COLUMN proposed_at,
    DROP COLUMN proposed_by,
    DROP COLUMN proposed_response,
    DROP COLUMN rewritten;
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    comments = ", ".join(f"({_literal(k)}, {_literal(v)})" for k, v in COLUMNS.items())
    op.execute(UPGRADE.replace("%(comments)s", comments).replace("%%", "%"))


def downgrade() -> None:
    op.execute(DOWNGRADE.replace("%%", "%"))
