-- name: list_rows
-- The first page of a namespace's rows. Its filters and order are the list_*
-- fragments below, so each state with each order is a query of its own, and
-- revision 0006 gave each an index that yields its first page without a sort:
-- the primary key (newest), the partial indexes on pending, included and
-- excluded rows (newest first), openai_chat_completion_seen_idx and
-- _pending_seen_idx (most seen first). A search goes through the trigram index
-- on user_prompt::text where the planner finds that cheaper than the order's.
SELECT id, times_seen, first_seen_at, last_seen_at, user_prompt::text AS user_prompt,
       coalesce(corrected_response->>'content',
                response->'choices'->0->'message'->>'content',
                (response->'choices'->0->'message'->'tool_calls')::text,
                curation_response_text(response)) AS answer,
       CASE WHEN excluded IS NOT NULL THEN 'excluded'
            WHEN included IS NOT NULL THEN 'included' ELSE 'pending' END AS state,
       corrected_response IS NOT NULL AS corrected, coalesce(flags, '{{}}') AS flags
FROM {table}
WHERE namespace = %(namespace)s {filters}
ORDER BY {order}
LIMIT %(limit)s

-- name: list_pending
AND included IS NULL AND excluded IS NULL
-- name: list_included
AND included IS NOT NULL AND excluded IS NULL
-- name: list_excluded
AND excluded IS NOT NULL
-- name: list_search
AND user_prompt::text ILIKE '%%' || %(search)s || '%%'
-- name: list_since
AND last_seen_at >= %(since)s
-- name: list_newest
id DESC
-- name: list_most_seen
times_seen DESC, id DESC

-- name: get_row
SELECT *, user_prompt::text AS user_prompt,
       CASE WHEN excluded IS NOT NULL THEN 'excluded'
            WHEN included IS NOT NULL THEN 'included' ELSE 'pending' END AS state
FROM {table} WHERE namespace = %(namespace)s AND id = %(id)s

-- name: row_states
SELECT id, CASE WHEN excluded IS NOT NULL THEN 'excluded'
                WHEN included IS NOT NULL THEN 'included' ELSE 'pending' END AS state
FROM {table} WHERE namespace = %(namespace)s AND id = ANY(%(ids)s)
FOR UPDATE

-- name: ids_matching
SELECT id FROM {table}
WHERE namespace = %(namespace)s AND user_prompt::text ILIKE '%%' || %(search)s || '%%'
ORDER BY id

-- name: set_state
UPDATE {table}
SET included = CASE %(state)s WHEN 'included' THEN now() END,
    excluded = CASE %(state)s WHEN 'excluded' THEN now() END,
    note = CASE WHEN %(note)s::text IS NULL THEN note ELSE %(note)s END
WHERE namespace = %(namespace)s AND id = ANY(%(ids)s)

-- name: set_correction
UPDATE {table} SET corrected_response = %(correction)s::json
WHERE namespace = %(namespace)s AND id = %(id)s

-- name: set_curator
SELECT set_config('curation.curator', %(curator)s, true)

-- name: history
SELECT id, column_name, old_value, new_value, changed_by, login, changed_at
FROM curation_audit WHERE namespace = %(namespace)s AND row_id = %(id)s
ORDER BY id

-- name: next_pending
-- The most-seen pending row nobody else is looking at: the lock holds while a
-- curator decides, and SKIP LOCKED hands a second curator the next one.
-- openai_chat_completion_pending_next_idx yields them in this order.
SELECT *, user_prompt::text AS user_prompt, 'pending' AS state FROM {table}
WHERE namespace = %(namespace)s AND included IS NULL AND excluded IS NULL
  AND NOT (id = ANY(%(skip)s))
ORDER BY times_seen DESC, id
LIMIT 1
FOR UPDATE SKIP LOCKED

-- name: review_progress
-- From the running counts (curation_counts, kept by triggers): no scan of the rows.
SELECT coalesce(sum(included + excluded), 0) AS reviewed,
       coalesce(sum(distinct_prompts), 0) AS total
FROM curation_counts
WHERE namespace = %(namespace)s

-- name: stats
-- Per namespace and model, from the running counts (curation_counts, kept by
-- triggers): as fast at a million rows as at ten. Filters: stats_namespace, or
-- none for every namespace.
SELECT namespace, model,
       sum(distinct_prompts) AS distinct_prompts,
       sum(calls) AS calls,
       sum(pending) AS pending,
       sum(included) AS included,
       sum(excluded) AS excluded,
       sum(corrected) AS corrected,
       sum(tokens_in) AS tokens_in,
       sum(tokens_out) AS tokens_out
FROM curation_counts
WHERE true {filters}
GROUP BY namespace, model
HAVING sum(distinct_prompts) <> 0
ORDER BY namespace, model

-- name: stats_namespace
AND namespace = %(namespace)s

-- name: stats_without_jit
-- new_since_last_job runs in milliseconds, but its plan's cost over a million rows (and
-- a never-analyzed namespace table) crosses jit_above_cost: compiling it took longer.
SET LOCAL jit = off

-- name: new_since_last_job
-- Included rows (as they are now) that the newest submitted job did not train on,
-- and the namespace's training prompt (stats shows when there is none).
SELECT n.name AS namespace, n.training_system_prompt,
       (SELECT count(*) FROM openai_chat_completion c
        WHERE c.namespace = n.name AND c.included IS NOT NULL AND c.excluded IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM dataset_row d
              WHERE d.namespace = c.namespace AND d.row_id = c.id AND d.row_version = c.version
                AND d.dataset_id = (SELECT j.dataset_id FROM fine_tune_job j
                                    WHERE j.namespace = n.name AND j.provider_job_id IS NOT NULL
                                    ORDER BY j.id DESC LIMIT 1))) AS new_included
FROM namespace n
WHERE %(namespace)s::text IS NULL OR n.name = %(namespace)s

-- name: purge_batch
-- One batch, in id order after the last batch's last id (keyset: a batch never
-- walks again over the rows earlier batches kept); RETURNING says where it ended.
DELETE FROM {table}
WHERE namespace = %(namespace)s AND id IN (
    SELECT c.id FROM {table} c
    WHERE c.namespace = %(namespace)s AND c.id > %(after)s
      AND c.last_seen_at < now() - %(older_than)s::interval
      AND (%(force)s OR c.included IS NULL)
      AND (c.excluded IS NULL OR %(include_excluded)s OR %(force)s)
      AND (%(force)s OR NOT EXISTS (
          SELECT 1 FROM dataset_row d WHERE d.namespace = c.namespace AND d.row_id = c.id))
    ORDER BY c.id
    LIMIT %(batch)s
)
RETURNING id
