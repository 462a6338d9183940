-- name: list_rows
SELECT id, times_seen, first_seen_at, last_seen_at, user_prompt::text AS user_prompt,
       coalesce(corrected_response->>'content',
                response->'choices'->0->'message'->>'content',
                (response->'choices'->0->'message'->'tool_calls')::text) AS answer,
       CASE WHEN excluded IS NOT NULL THEN 'excluded'
            WHEN included IS NOT NULL THEN 'included' ELSE 'pending' END AS state,
       corrected_response IS NOT NULL AS corrected
FROM {table}
WHERE (%(state)s::text IS NULL
       OR (%(state)s = 'pending' AND included IS NULL AND excluded IS NULL)
       OR (%(state)s = 'included' AND included IS NOT NULL AND excluded IS NULL)
       OR (%(state)s = 'excluded' AND excluded IS NOT NULL))
  AND (%(search)s::text IS NULL OR user_prompt ILIKE '%%' || %(search)s || '%%')
  AND (%(since)s::timestamptz IS NULL OR last_seen_at >= %(since)s)
ORDER BY CASE WHEN %(sort)s = 'seen' THEN times_seen END DESC NULLS LAST, id DESC
LIMIT %(limit)s

-- name: get_row
SELECT *, user_prompt::text AS user_prompt,
       CASE WHEN excluded IS NOT NULL THEN 'excluded'
            WHEN included IS NOT NULL THEN 'included' ELSE 'pending' END AS state
FROM {table} WHERE id = %(id)s

-- name: row_states
SELECT id, CASE WHEN excluded IS NOT NULL THEN 'excluded'
                WHEN included IS NOT NULL THEN 'included' ELSE 'pending' END AS state
FROM {table} WHERE id = ANY(%(ids)s)
FOR UPDATE

-- name: ids_matching
SELECT id FROM {table}
WHERE user_prompt ILIKE '%%' || %(search)s || '%%'
ORDER BY id

-- name: set_state
UPDATE {table}
SET included = CASE %(state)s WHEN 'included' THEN now() END,
    excluded = CASE %(state)s WHEN 'excluded' THEN now() END,
    note = CASE WHEN %(note)s::text IS NULL THEN note ELSE %(note)s END
WHERE id = ANY(%(ids)s)

-- name: set_correction
UPDATE {table} SET corrected_response = %(correction)s::json WHERE id = %(id)s

-- name: set_curator
SELECT set_config('curation.curator', %(curator)s, true)

-- name: history
SELECT id, column_name, old_value, new_value, changed_by, login, changed_at
FROM curation_audit WHERE namespace = %(namespace)s AND row_id = %(id)s
ORDER BY id

-- name: next_pending
-- The most-seen pending row nobody else is looking at: the lock holds while a
-- curator decides, and SKIP LOCKED hands a second curator the next one.
SELECT *, user_prompt::text AS user_prompt, 'pending' AS state FROM {table}
WHERE included IS NULL AND excluded IS NULL AND NOT (id = ANY(%(skip)s))
ORDER BY times_seen DESC, id
LIMIT 1
FOR UPDATE SKIP LOCKED

-- name: review_progress
SELECT count(*) FILTER (WHERE included IS NOT NULL OR excluded IS NOT NULL) AS reviewed, count(*) AS total
FROM {table}

-- name: stats
SELECT c.namespace, c.model,
       count(*) AS distinct_prompts,
       sum(c.times_seen) AS calls,
       count(*) FILTER (WHERE c.included IS NULL AND c.excluded IS NULL) AS pending,
       count(*) FILTER (WHERE c.included IS NOT NULL AND c.excluded IS NULL) AS included,
       count(*) FILTER (WHERE c.excluded IS NOT NULL) AS excluded,
       count(*) FILTER (WHERE c.corrected_response IS NOT NULL) AS corrected,
       coalesce(sum(c.prompt_tokens::bigint * c.times_seen), 0) AS tokens_in,
       coalesce(sum(c.completion_tokens::bigint * c.times_seen), 0) AS tokens_out
FROM openai_chat_completion c
WHERE %(namespace)s::text IS NULL OR c.namespace = %(namespace)s
GROUP BY c.namespace, c.model
ORDER BY c.namespace, c.model

-- name: new_since_last_job
-- Included rows (as they are now) that the newest submitted job did not train on.
SELECT n.name AS namespace,
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
DELETE FROM {table}
WHERE id IN (
    SELECT c.id FROM {table} c
    WHERE c.last_seen_at < now() - %(older_than)s::interval
      AND (%(force)s OR c.included IS NULL)
      AND (c.excluded IS NULL OR %(include_excluded)s OR %(force)s)
      AND (%(force)s OR NOT EXISTS (
          SELECT 1 FROM dataset_row d WHERE d.namespace = c.namespace AND d.row_id = c.id))
    ORDER BY c.id
    LIMIT %(batch)s
)
