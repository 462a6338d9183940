"""Curation: audit trail, reviewer stamps, the curation_curator role.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE curation_audit (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL,
    row_id bigint NOT NULL,
    column_name text NOT NULL,
    old_value text,
    new_value text,
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX curation_audit_row_idx ON curation_audit (namespace, row_id, id);
COMMENT ON TABLE curation_audit IS 'Every change of a curation column or deletion of a row, from psql or the CLI (written by a trigger).';
COMMENT ON COLUMN curation_audit.id IS 'Audit entry id (order of changes).';
COMMENT ON COLUMN curation_audit.namespace IS 'Namespace of the row.';
COMMENT ON COLUMN curation_audit.row_id IS 'openai_chat_completion.id of the row.';
COMMENT ON COLUMN curation_audit.column_name IS 'The column changed, or "row" for a deletion.';
COMMENT ON COLUMN curation_audit.old_value IS 'Value before, as text.';
COMMENT ON COLUMN curation_audit.new_value IS 'Value after, as text (NULL for a deletion).';
COMMENT ON COLUMN curation_audit.changed_by IS 'The CLI''s --curator, else the database user.';
COMMENT ON COLUMN curation_audit.changed_at IS 'When.';

-- Who is curating: the CLI sets curation.curator for its transaction; psql
-- users are who they logged in as.
CREATE FUNCTION curation_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('curation.curator', true), ''), session_user::text)
$$;

CREATE FUNCTION curation_stamp_review() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.included IS DISTINCT FROM OLD.included OR NEW.excluded IS DISTINCT FROM OLD.excluded
       OR NEW.corrected_response::text IS DISTINCT FROM OLD.corrected_response::text
       OR NEW.note IS DISTINCT FROM OLD.note THEN
        NEW.reviewed_by := curation_actor();
        NEW.reviewed_at := now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stamp_review BEFORE UPDATE ON openai_chat_completion
    FOR EACH ROW EXECUTE FUNCTION curation_stamp_review();

-- SECURITY DEFINER: curators may not write the audit table themselves.
CREATE FUNCTION curation_audit_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
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
CREATE TRIGGER audit_change AFTER UPDATE ON openai_chat_completion
    FOR EACH ROW
    WHEN (OLD.included IS DISTINCT FROM NEW.included OR OLD.excluded IS DISTINCT FROM NEW.excluded
          OR OLD.corrected_response::text IS DISTINCT FROM NEW.corrected_response::text
          OR OLD.note IS DISTINCT FROM NEW.note OR OLD.tags IS DISTINCT FROM NEW.tags)
    EXECUTE FUNCTION curation_audit_change();
CREATE TRIGGER audit_delete AFTER DELETE ON openai_chat_completion
    FOR EACH ROW EXECUTE FUNCTION curation_audit_change();

-- The curator role: read everything, change only curation columns, delete nothing.
DO $$
BEGIN
    CREATE ROLE curation_curator NOLOGIN;
    COMMENT ON ROLE curation_curator IS 'Grant to people who curate: read the namespace tables, change only curation columns.';
-- roles belong to the cluster: another database may have made it, or be making it right now
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT USAGE ON SCHEMA public TO curation_curator;
GRANT SELECT ON namespace, openai_chat_completion, dataset, dataset_row, fine_tune_job, curation_audit TO curation_curator;

CREATE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (included, excluded, corrected_response, note, tags, reviewed_by, reviewed_at) ON %s TO curation_curator', tbl);
END $$;
SELECT curation_grant_curator('openai_chat_completion');
SELECT curation_grant_curator(inhrelid::regclass) FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass;

CREATE OR REPLACE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
    PERFORM curation_grant_curator(tbl);
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
END $$;
DROP FUNCTION curation_grant_curator(regclass);
-- the role belongs to the cluster: drop only this database's grants
DROP OWNED BY curation_curator;
DROP TRIGGER audit_delete ON openai_chat_completion;
DROP TRIGGER audit_change ON openai_chat_completion;
DROP FUNCTION curation_audit_change();
DROP TRIGGER stamp_review ON openai_chat_completion;
DROP FUNCTION curation_stamp_review();
DROP FUNCTION curation_actor();
DROP TABLE curation_audit;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
