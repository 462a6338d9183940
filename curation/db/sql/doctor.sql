-- name: doctor_citext
-- The citext extension: the version installed here (NULL: not installed) and the one the
-- server could install (NULL: not available, e.g. a managed PostgreSQL without contrib).
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'citext') AS installed,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'citext') AS available

-- name: doctor_curator_role
SELECT rolname FROM pg_roles WHERE rolname = 'curation_curator'

-- name: doctor_shared_grant_gaps
-- The shared tables the curator role must be able to read.
SELECT t AS table_name
FROM unnest(ARRAY['namespace', 'openai_chat_completion', 'dataset', 'dataset_row',
                  'fine_tune_job', 'curation_audit']) AS t
WHERE to_regclass(t) IS NOT NULL AND NOT has_table_privilege('curation_curator', t, 'SELECT')
ORDER BY t

-- name: doctor_table_grant_gaps
-- Namespace tables whose curator grants are not as the migrations set them: it must read the
-- table and update the curation columns, and must not delete rows or rewrite what was recorded.
-- (MATERIALIZED: the privilege functions must only ever see namespace tables.)
WITH tables AS MATERIALIZED (
    SELECT to_regclass(quote_ident(n.name || '_openai_chat_completion')) AS tbl
    FROM namespace n
), grants AS (
    SELECT tbl::text AS table_name,
           array_remove(ARRAY[
               CASE WHEN NOT has_table_privilege('curation_curator', tbl, 'SELECT') THEN 'SELECT' END,
               CASE WHEN NOT has_column_privilege('curation_curator', tbl, 'included', 'UPDATE') THEN 'UPDATE (included)' END,
               CASE WHEN NOT has_column_privilege('curation_curator', tbl, 'excluded', 'UPDATE') THEN 'UPDATE (excluded)' END,
               CASE WHEN NOT has_column_privilege('curation_curator', tbl, 'corrected_response', 'UPDATE') THEN 'UPDATE (corrected_response)' END,
               CASE WHEN NOT has_column_privilege('curation_curator', tbl, 'note', 'UPDATE') THEN 'UPDATE (note)' END,
               CASE WHEN NOT has_column_privilege('curation_curator', tbl, 'tags', 'UPDATE') THEN 'UPDATE (tags)' END
           ], NULL) AS missing,
           array_remove(ARRAY[
               CASE WHEN has_table_privilege('curation_curator', tbl, 'DELETE') THEN 'DELETE' END,
               CASE WHEN has_table_privilege('curation_curator', tbl, 'TRUNCATE') THEN 'TRUNCATE' END,
               CASE WHEN has_column_privilege('curation_curator', tbl, 'response', 'UPDATE') THEN 'UPDATE (response)' END,
               CASE WHEN has_column_privilege('curation_curator', tbl, 'user_prompt', 'UPDATE') THEN 'UPDATE (user_prompt)' END
           ], NULL) AS extra
    FROM tables
    WHERE tbl IS NOT NULL
)
SELECT table_name, missing, extra
FROM grants
WHERE missing <> '{}' OR extra <> '{}'
ORDER BY table_name

-- name: doctor_corrections
-- Corrected text answers beside the recorded ones, to compare their formats; bounded.
SELECT namespace, id,
       response -> 'choices' -> 0 -> 'message' ->> 'content' AS original,
       corrected_response ->> 'content' AS correction
FROM openai_chat_completion
WHERE corrected_response IS NOT NULL
  AND json_typeof(corrected_response -> 'content') = 'string'
  AND json_typeof(response -> 'choices' -> 0 -> 'message' -> 'content') = 'string'
ORDER BY namespace, id
LIMIT %(limit)s

-- name: doctor_included
-- How many rows of each namespace an export would read.
SELECT namespace, count(*) AS included
FROM openai_chat_completion
WHERE included IS NOT NULL AND excluded IS NULL AND NOT rewritten
GROUP BY namespace
ORDER BY namespace

-- name: doctor_first_included
-- The first rows an export of the namespace would read (export_rows' own conditions).
SELECT id FROM {table}
WHERE included IS NOT NULL AND excluded IS NULL AND NOT rewritten
ORDER BY id
LIMIT %(limit)s
