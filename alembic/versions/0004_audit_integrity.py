"""Audit integrity: the real login on every audit row, no exemptions a curator can SET.

A curator is a login granted curation_curator. What such a login can SET
(curation.curator, curation.source) or write (reviewed_by, reviewed_at) is a
claim; what it cannot change is its session_user and the columns it has no
UPDATE on. The audit now rests on the latter:
- every audit entry records session_user as ``login`` beside the claimed name;
- the proxy's tag merges skip the audit only when the row is seen again
  (times_seen rises: curators cannot update it) by a login with the table
  owner's privileges (creating partitions needs them), that says so;
- reviewed_by / reviewed_at are the trigger's alone (and no longer granted);
- TRUNCATE of the completions table or any partition is refused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Entries written before this revision have no login: leave them NULL rather
-- than credit the migrating user; every new entry must have one.
ALTER TABLE curation_audit ADD COLUMN login text;
ALTER TABLE curation_audit ALTER COLUMN login SET DEFAULT session_user;
ALTER TABLE curation_audit ADD CONSTRAINT curation_audit_login_check CHECK (login IS NOT NULL) NOT VALID;
COMMENT ON COLUMN curation_audit.login IS 'The database login that made the change (session_user): nothing a session can SET changes it. NULL only on entries written before revision 0004.';
COMMENT ON COLUMN curation_audit.changed_by IS 'The curator claimed: the CLI''s --curator or a session''s curation.curator, else the login. Anyone can claim a name; login says who made the change.';

CREATE FUNCTION curation_is_capture_merge(old_seen integer, new_seen integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT new_seen > old_seen
       AND current_setting('curation.source', true) = 'proxy'
       AND pg_has_role(session_user,
                       (SELECT relowner FROM pg_class WHERE oid = 'openai_chat_completion'::regclass),
                       'MEMBER')
$$;
COMMENT ON FUNCTION curation_is_capture_merge(integer, integer) IS
    'True for the proxy''s repeat capture, whose tag merge is not curation and is not audited: '
    'the row is seen again (times_seen rises, which curation_curator may not update), by a login '
    'with the privileges of the tables'' owner (the proxy needs them to create partitions), '
    'with curation.source = proxy. A curator can SET the last, never the first two.';

CREATE OR REPLACE FUNCTION curation_audit_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    who text := curation_actor();
    merge boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO curation_audit (namespace, row_id, column_name, old_value, new_value, changed_by, login)
        VALUES (OLD.namespace, OLD.id, 'row', OLD.user_prompt::text, NULL, who, session_user);
        RETURN OLD;
    END IF;
    merge := curation_is_capture_merge(OLD.times_seen, NEW.times_seen);
    INSERT INTO curation_audit (namespace, row_id, column_name, old_value, new_value, changed_by, login)
    SELECT NEW.namespace, NEW.id, c.name, c.old, c.new, who, session_user
    FROM (VALUES
        ('included', OLD.included::text, NEW.included::text),
        ('excluded', OLD.excluded::text, NEW.excluded::text),
        ('corrected_response', OLD.corrected_response::text, NEW.corrected_response::text),
        ('proposed_response', OLD.proposed_response::text, NEW.proposed_response::text),
        ('note', OLD.note, NEW.note),
        ('tags', CASE WHEN merge THEN NULL ELSE OLD.tags::text END,
                 CASE WHEN merge THEN NULL ELSE NEW.tags::text END)
    ) AS c(name, old, new)
    WHERE c.old IS DISTINCT FROM c.new;
    RETURN NEW;
END $$;

-- The stamp is the trigger's: whatever the statement wrote there is put back.
CREATE OR REPLACE FUNCTION curation_stamp_review() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.included IS DISTINCT FROM OLD.included OR NEW.excluded IS DISTINCT FROM OLD.excluded
       OR NEW.corrected_response::text IS DISTINCT FROM OLD.corrected_response::text
       OR NEW.note IS DISTINCT FROM OLD.note THEN
        NEW.reviewed_by := curation_actor();
        NEW.reviewed_at := now();
    ELSE
        NEW.reviewed_by := OLD.reviewed_by;
        NEW.reviewed_at := OLD.reviewed_at;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (included, excluded, corrected_response, note, tags, proposed_response, proposed_by, proposed_at) ON %s TO curation_curator', tbl);
END $$;
REVOKE UPDATE (reviewed_by, reviewed_at) ON openai_chat_completion FROM curation_curator;

CREATE FUNCTION curation_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % would remove captured rows without a trace in curation_audit', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'DELETE the rows instead (audited), e.g. curation purge NAMESPACE --older-than 90d';
END $$;

-- A partition's own TRUNCATE fires only its own triggers, the parent's only the parent's.
CREATE FUNCTION curation_guard_truncate(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION curation_refuse_truncate()', tbl);
END $$;
SELECT curation_guard_truncate('openai_chat_completion');

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        EXECUTE format('REVOKE UPDATE (reviewed_by, reviewed_at) ON %s FROM curation_curator', part);
        PERFORM curation_guard_truncate(part);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
    PERFORM curation_grant_curator(tbl);
    PERFORM curation_guard_truncate(tbl);
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
    PERFORM curation_grant_curator(tbl);
END $$;

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS refuse_truncate ON %s', part);
        EXECUTE format('GRANT UPDATE (reviewed_by, reviewed_at) ON %s TO curation_curator', part);
    END LOOP;
END $$;
DROP TRIGGER refuse_truncate ON openai_chat_completion;
DROP FUNCTION curation_guard_truncate(regclass);
DROP FUNCTION curation_refuse_truncate();

GRANT UPDATE (reviewed_by, reviewed_at) ON openai_chat_completion TO curation_curator;
CREATE OR REPLACE FUNCTION curation_grant_curator(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON %s TO curation_curator', tbl);
    EXECUTE format('GRANT UPDATE (included, excluded, corrected_response, note, tags, reviewed_by, reviewed_at, proposed_response, proposed_by, proposed_at) ON %s TO curation_curator', tbl);
END $$;

CREATE OR REPLACE FUNCTION curation_stamp_review() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.included IS DISTINCT FROM OLD.included OR NEW.excluded IS DISTINCT FROM OLD.excluded
       OR NEW.corrected_response::text IS DISTINCT FROM OLD.corrected_response::text
       OR NEW.note IS DISTINCT FROM OLD.note THEN
        NEW.reviewed_by := curation_actor();
        NEW.reviewed_at := now();
    END IF;
    RETURN NEW;
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
DROP FUNCTION curation_is_capture_merge(integer, integer);

ALTER TABLE curation_audit DROP COLUMN login;
COMMENT ON COLUMN curation_audit.changed_by IS 'The CLI''s --curator, else the database user.';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
