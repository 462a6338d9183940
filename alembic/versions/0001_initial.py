"""Initial schema: namespaces, captured completions (one partition per namespace),
datasets with lineage, fine-tuning jobs, spool checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS citext;

CREATE TABLE namespace (
    name text PRIMARY KEY CONSTRAINT namespace_name_check CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    training_system_prompt text,
    base_model text,
    serve_model text,
    serve_percent smallint NOT NULL DEFAULT 100 CHECK (serve_percent BETWEEN 0 AND 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE namespace IS 'One task whose traffic is captured and trained on; each has a partition <name>_openai_chat_completion.';
COMMENT ON COLUMN namespace.name IS 'Becomes part of a table name: ^[a-z][a-z0-9_]{0,39}$.';
COMMENT ON COLUMN namespace.training_system_prompt IS 'The short system prompt training examples carry and the fine-tuned model is called with.';
COMMENT ON COLUMN namespace.base_model IS 'Default base model to fine-tune (e.g. gpt-4o-mini-2024-07-18).';
COMMENT ON COLUMN namespace.serve_model IS 'When set, the proxy answers this namespace with this (fine-tuned) model.';
COMMENT ON COLUMN namespace.serve_percent IS 'Share of calls (0-100) routed to serve_model.';
COMMENT ON COLUMN namespace.created_at IS 'When the namespace was created.';
COMMENT ON COLUMN namespace.updated_at IS 'When a setting last changed.';

CREATE SEQUENCE openai_chat_completion_id_seq AS bigint;

CREATE TABLE openai_chat_completion (
    id bigint NOT NULL DEFAULT nextval('openai_chat_completion_id_seq'),
    namespace text NOT NULL REFERENCES namespace (name),
    user_prompt citext NOT NULL,
    user_prompt_key uuid GENERATED ALWAYS AS (md5(lower(user_prompt::text))::uuid) STORED,
    response json NOT NULL,
    included timestamptz,
    excluded timestamptz,
    corrected_response json,
    reviewed_by text,
    reviewed_at timestamptz,
    note text,
    tags jsonb NOT NULL DEFAULT '{}',
    request jsonb NOT NULL DEFAULT '{}',
    system_prompt text,
    model text,
    prompt_tokens integer,
    completion_tokens integer,
    latency_ms real,
    streamed boolean NOT NULL DEFAULT false,
    upstream_request_id text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    times_seen integer NOT NULL DEFAULT 1,
    version integer NOT NULL DEFAULT 1,
    PRIMARY KEY (namespace, id),
    UNIQUE (namespace, user_prompt_key)
) PARTITION BY LIST (namespace);
ALTER SEQUENCE openai_chat_completion_id_seq OWNED BY openai_chat_completion.id;

COMMENT ON TABLE openai_chat_completion IS 'Captured chat completions, partitioned by namespace; query a namespace through <namespace>_openai_chat_completion.';
COMMENT ON COLUMN openai_chat_completion.id IS 'Row id, unique across namespaces (one shared sequence).';
COMMENT ON COLUMN openai_chat_completion.namespace IS 'The namespace (task) this call belongs to; the partition key.';
COMMENT ON COLUMN openai_chat_completion.user_prompt IS 'The user-visible input: the last user message, or a rendering of the whole non-system conversation. Unique per namespace, case-insensitively.';
COMMENT ON COLUMN openai_chat_completion.user_prompt_key IS 'md5 of lower(user_prompt): the unique key, equal exactly when citext calls two prompts equal. A btree cannot index prompts over ~2.7 kB; their hash it can.';
COMMENT ON COLUMN openai_chat_completion.response IS 'The chat.completion object exactly as the upstream returned it (streams reassembled). Never overwritten by repeats.';
COMMENT ON COLUMN openai_chat_completion.included IS 'When a curator included the row in training data; NULL = not included. UPDATE ... SET included = now().';
COMMENT ON COLUMN openai_chat_completion.excluded IS 'When a curator reviewed and rejected the row; excluded rows are never exported.';
COMMENT ON COLUMN openai_chat_completion.corrected_response IS 'A curator''s fixed assistant message ({"role":"assistant","content":...}); export prefers it over response.';
COMMENT ON COLUMN openai_chat_completion.reviewed_by IS 'Who last changed the curation state.';
COMMENT ON COLUMN openai_chat_completion.reviewed_at IS 'When the curation state last changed.';
COMMENT ON COLUMN openai_chat_completion.note IS 'Free text from the curator (e.g. why excluded).';
COMMENT ON COLUMN openai_chat_completion.tags IS 'Tags from X-Curation-Tags, the request metadata and user; merged on repeats.';
COMMENT ON COLUMN openai_chat_completion.request IS 'The request body (messages, tools, model, parameters); never credentials.';
COMMENT ON COLUMN openai_chat_completion.system_prompt IS 'The production system/developer prompt the call was made with.';
COMMENT ON COLUMN openai_chat_completion.model IS 'The model that answered, as the response names it.';
COMMENT ON COLUMN openai_chat_completion.prompt_tokens IS 'Prompt tokens of the first call (usage.prompt_tokens).';
COMMENT ON COLUMN openai_chat_completion.completion_tokens IS 'Completion tokens of the first call (usage.completion_tokens).';
COMMENT ON COLUMN openai_chat_completion.latency_ms IS 'Upstream latency of the first call, in milliseconds (to the last byte).';
COMMENT ON COLUMN openai_chat_completion.streamed IS 'Whether the first call was streamed (response reassembled from SSE chunks).';
COMMENT ON COLUMN openai_chat_completion.upstream_request_id IS 'x-request-id the upstream gave the first call.';
COMMENT ON COLUMN openai_chat_completion.first_seen_at IS 'When this user_prompt was first seen.';
COMMENT ON COLUMN openai_chat_completion.last_seen_at IS 'When this user_prompt was last seen.';
COMMENT ON COLUMN openai_chat_completion.times_seen IS 'How many calls carried this user_prompt.';
COMMENT ON COLUMN openai_chat_completion.version IS 'Bumped when the prompt, response or correction changes; datasets record it for lineage.';

CREATE FUNCTION curation_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.response::text IS DISTINCT FROM OLD.response::text
       OR NEW.corrected_response::text IS DISTINCT FROM OLD.corrected_response::text
       OR NEW.user_prompt IS DISTINCT FROM OLD.user_prompt THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bump_version BEFORE UPDATE ON openai_chat_completion
    FOR EACH ROW EXECUTE FUNCTION curation_bump_version();

-- Partitions do not inherit column comments: copy the parent's, so \d+ explains them.
CREATE FUNCTION curation_copy_comments(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT a.attname, d.description
        FROM pg_attribute a
        JOIN pg_description d ON d.objoid = a.attrelid AND d.objsubid = a.attnum
        WHERE a.attrelid = 'openai_chat_completion'::regclass
    LOOP
        EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', tbl, col.attname, col.description);
    END LOOP;
END $$;

-- What every new partition gets; later revisions extend it (e.g. grants).
CREATE FUNCTION curation_setup_partition(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM curation_copy_comments(tbl);
END $$;

-- The one way a namespace and its partition come to exist (the CLI, the proxy
-- and sql/create_namespace.sql all call it). Idempotent; returns true when it
-- created the namespace.
CREATE FUNCTION curation_create_namespace(
    p_name text,
    p_training_system_prompt text DEFAULT NULL,
    p_base_model text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    tbl text := p_name || '_openai_chat_completion';
    created boolean;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'invalid namespace name %', quote_nullable(p_name)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use 1-40 characters: a lowercase letter, then lowercase letters, digits or _';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('curation_namespace'), hashtext(p_name));
    INSERT INTO namespace (name, training_system_prompt, base_model)
    VALUES (p_name, p_training_system_prompt, p_base_model)
    ON CONFLICT (name) DO NOTHING;
    created := FOUND;
    IF to_regclass(quote_ident(tbl)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF openai_chat_completion FOR VALUES IN (%L)', tbl, p_name);
        EXECUTE format('COMMENT ON TABLE %I IS %L', tbl,
            'Chat completions captured for namespace ' || p_name
            || '. Include a row: UPDATE ' || tbl || ' SET included = now() WHERE id = ...');
        PERFORM curation_setup_partition(quote_ident(tbl)::regclass);
    END IF;
    RETURN created;
END $$;
COMMENT ON FUNCTION curation_create_namespace(text, text, text) IS
    'Create a namespace and its partition <name>_openai_chat_completion (idempotent).';

CREATE TABLE dataset (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL REFERENCES namespace (name),
    format text NOT NULL CHECK (format IN ('chat', 'dpo')),
    base_model text NOT NULL,
    system_prompt text,
    sha256 text NOT NULL,
    train_sha256 text NOT NULL,
    validation_sha256 text,
    train_examples integer NOT NULL,
    validation_examples integer NOT NULL,
    train_tokens bigint NOT NULL,
    validation_tokens bigint NOT NULL,
    skipped integer NOT NULL DEFAULT 0,
    manifest jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dataset_namespace_idx ON dataset (namespace, created_at);
COMMENT ON TABLE dataset IS 'An exported training set (train + validation files) of one namespace.';
COMMENT ON COLUMN dataset.id IS 'Dataset id.';
COMMENT ON COLUMN dataset.namespace IS 'The namespace it was exported from.';
COMMENT ON COLUMN dataset.format IS 'chat (supervised messages) or dpo (preference pairs).';
COMMENT ON COLUMN dataset.base_model IS 'The base model its tokens were counted for.';
COMMENT ON COLUMN dataset.system_prompt IS 'The short system prompt every example carries (NULL: none).';
COMMENT ON COLUMN dataset.sha256 IS 'sha256 over both files: equal sha256 = identical training input.';
COMMENT ON COLUMN dataset.train_sha256 IS 'sha256 of train.jsonl.';
COMMENT ON COLUMN dataset.validation_sha256 IS 'sha256 of validation.jsonl (NULL: no validation file).';
COMMENT ON COLUMN dataset.train_examples IS 'Examples in train.jsonl.';
COMMENT ON COLUMN dataset.validation_examples IS 'Examples in validation.jsonl.';
COMMENT ON COLUMN dataset.train_tokens IS 'Tokens in train.jsonl (base model encoding, with chat overhead).';
COMMENT ON COLUMN dataset.validation_tokens IS 'Tokens in validation.jsonl.';
COMMENT ON COLUMN dataset.skipped IS 'Included rows left out, with reasons in manifest.';
COMMENT ON COLUMN dataset.manifest IS 'The manifest.json written with the files.';
COMMENT ON COLUMN dataset.created_at IS 'When it was exported.';

CREATE TABLE dataset_row (
    dataset_id bigint NOT NULL REFERENCES dataset (id) ON DELETE CASCADE,
    namespace text NOT NULL,
    row_id bigint NOT NULL,
    row_version integer NOT NULL,
    split text NOT NULL CHECK (split IN ('train', 'validation')),
    tokens integer NOT NULL,
    PRIMARY KEY (dataset_id, row_id)
);
CREATE INDEX dataset_row_row_idx ON dataset_row (namespace, row_id);
COMMENT ON TABLE dataset_row IS 'Lineage: which version of which row went into which split of which dataset.';
COMMENT ON COLUMN dataset_row.dataset_id IS 'The dataset.';
COMMENT ON COLUMN dataset_row.namespace IS 'Namespace of the row.';
COMMENT ON COLUMN dataset_row.row_id IS 'openai_chat_completion.id of the row.';
COMMENT ON COLUMN dataset_row.row_version IS 'openai_chat_completion.version of the row when exported.';
COMMENT ON COLUMN dataset_row.split IS 'train or validation.';
COMMENT ON COLUMN dataset_row.tokens IS 'Tokens of the example.';

CREATE TABLE fine_tune_job (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL REFERENCES namespace (name),
    dataset_id bigint REFERENCES dataset (id),
    provider_job_id text UNIQUE,
    base_model text NOT NULL,
    suffix text,
    method text NOT NULL DEFAULT 'supervised',
    hyperparameters jsonb NOT NULL DEFAULT '{}',
    training_file_id text,
    validation_file_id text,
    status text NOT NULL DEFAULT 'pending',
    fine_tuned_model text,
    trained_tokens bigint,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX fine_tune_job_namespace_idx ON fine_tune_job (namespace, created_at);
COMMENT ON TABLE fine_tune_job IS 'Fine-tuning jobs submitted to the provider, updated from it on status/wait.';
COMMENT ON COLUMN fine_tune_job.id IS 'Local job id.';
COMMENT ON COLUMN fine_tune_job.namespace IS 'The namespace trained on.';
COMMENT ON COLUMN fine_tune_job.dataset_id IS 'The dataset (and through it the exact rows) trained on.';
COMMENT ON COLUMN fine_tune_job.provider_job_id IS 'The provider''s job id (ftjob-...); NULL until created.';
COMMENT ON COLUMN fine_tune_job.base_model IS 'The base model fine-tuned.';
COMMENT ON COLUMN fine_tune_job.suffix IS 'Suffix of the fine-tuned model name.';
COMMENT ON COLUMN fine_tune_job.method IS 'supervised or dpo.';
COMMENT ON COLUMN fine_tune_job.hyperparameters IS 'Hyperparameters sent (epochs, ...), and seed.';
COMMENT ON COLUMN fine_tune_job.training_file_id IS 'Uploaded training file id; kept so a retry reuses it.';
COMMENT ON COLUMN fine_tune_job.validation_file_id IS 'Uploaded validation file id.';
COMMENT ON COLUMN fine_tune_job.status IS 'pending (local), upload_failed, create_failed, or the provider''s status.';
COMMENT ON COLUMN fine_tune_job.fine_tuned_model IS 'The resulting model name (ft:...) once succeeded.';
COMMENT ON COLUMN fine_tune_job.trained_tokens IS 'Billable tokens the provider reports.';
COMMENT ON COLUMN fine_tune_job.error IS 'The provider''s or local error message.';
COMMENT ON COLUMN fine_tune_job.created_at IS 'When submitted.';
COMMENT ON COLUMN fine_tune_job.updated_at IS 'When last refreshed from the provider.';
COMMENT ON COLUMN fine_tune_job.finished_at IS 'When it reached succeeded, failed or cancelled.';

CREATE TABLE spool_checkpoint (
    spool_id uuid PRIMARY KEY,
    segment bigint NOT NULL,
    byte_offset bigint NOT NULL,
    rows_written bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE spool_checkpoint IS 'How far each proxy spool has been written; updated in the same transaction as the rows, so a replay never writes twice.';
COMMENT ON COLUMN spool_checkpoint.spool_id IS 'The spool directory''s id (its file "id").';
COMMENT ON COLUMN spool_checkpoint.segment IS 'Segment number written up to.';
COMMENT ON COLUMN spool_checkpoint.byte_offset IS 'Byte offset in that segment written up to.';
COMMENT ON COLUMN spool_checkpoint.rows_written IS 'Records committed from this spool, in all.';
COMMENT ON COLUMN spool_checkpoint.updated_at IS 'When the writer last committed.';
"""

DOWNGRADE = r"""
DROP TABLE spool_checkpoint;
DROP TABLE fine_tune_job;
DROP TABLE dataset_row;
DROP TABLE dataset;
DROP FUNCTION curation_create_namespace(text, text, text);
DROP FUNCTION curation_setup_partition(regclass);
DROP FUNCTION curation_copy_comments(regclass);
DROP TABLE openai_chat_completion;
DROP FUNCTION curation_bump_version();
DROP TABLE namespace;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
