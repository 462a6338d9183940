-- The curator web page's own queries (curation/web). A rows page is curate.sql's
-- list_rows, newest first, with the list_* filters and the web_* ones below;
-- web_after makes it a keyset page (ids below the last one shown), so each page is
-- an index range, as fast at a million rows as the first.

-- name: web_session
-- A page session's connection holds the row it shows (next pending) in an open
-- transaction: a decision by someone else on that row waits, but never for long,
-- and a forgotten tab lets go of its row after half an hour. pg_stat_activity names it.
SET lock_timeout = '3s'; SET statement_timeout = '30s';
SET idle_in_transaction_session_timeout = '30min'; SET application_name = 'curation web'

-- name: web_namespaces
-- One line per namespace: the running counts (curation_counts), rows with negative
-- feedback, the last dataset and job, serving state. Indexed lookups only.
SELECT n.name, n.training_system_prompt, n.base_model, n.serve_model, n.serve_percent,
       n.serve_endpoint, n.serve_shadow_percent,
       coalesce(c.rows, 0) AS rows, coalesce(c.pending, 0) AS pending,
       coalesce(c.included, 0) AS included, coalesce(c.excluded, 0) AS excluded,
       coalesce(c.corrected, 0) AS corrected,
       (SELECT count(*) FROM feedback_by_row f WHERE f.namespace = n.name AND f.negative > 0)
           AS negative_feedback,
       d.id AS dataset_id, d.created_at AS dataset_at, d.train_examples,
       j.provider_job_id AS job_id, j.status AS job_status, j.fine_tuned_model
FROM namespace n
LEFT JOIN (SELECT namespace, sum(distinct_prompts) AS rows, sum(pending) AS pending,
                  sum(included) AS included, sum(excluded) AS excluded,
                  sum(corrected) AS corrected
           FROM curation_counts GROUP BY namespace) c ON c.namespace = n.name
LEFT JOIN LATERAL (SELECT id, created_at, train_examples FROM dataset
                   WHERE namespace = n.name ORDER BY created_at DESC LIMIT 1) d ON true
LEFT JOIN LATERAL (SELECT provider_job_id, status, fine_tuned_model FROM fine_tune_job
                   WHERE namespace = n.name ORDER BY created_at DESC LIMIT 1) j ON true
ORDER BY n.name

-- name: web_count
-- How many rows match, counted up to a cap: the page says "10000+" rather than
-- walk a million rows for a number nobody reads exactly.
SELECT count(*) AS n FROM (
    SELECT 1 FROM {table} WHERE namespace = %(namespace)s {filters} LIMIT %(cap)s
) s

-- name: web_after
AND id < %(after)s
-- name: web_corrected
AND corrected_response IS NOT NULL
-- name: web_proposals
AND proposed_response IS NOT NULL
-- name: web_tag
AND tags @> %(tag)s::jsonb
-- name: web_model
AND model = %(model)s

-- name: web_neighbours
-- The rows before and after one in the rows page's order (newest first): j and k.
SELECT (SELECT max(id) FROM {table} WHERE namespace = %(namespace)s AND id < %(id)s) AS next_id,
       (SELECT min(id) FROM {table} WHERE namespace = %(namespace)s AND id > %(id)s) AS previous_id

-- name: web_set_note
UPDATE {table} SET note = %(note)s WHERE namespace = %(namespace)s AND id = %(id)s
RETURNING id

-- name: web_state_counts
-- Rows in each state, from the running counts (curation_counts): exact and instant,
-- for a rows page filtered by state alone.
SELECT coalesce(sum(distinct_prompts), 0) AS "all", coalesce(sum(pending), 0) AS pending,
       coalesce(sum(included), 0) AS included, coalesce(sum(excluded), 0) AS excluded,
       coalesce(sum(corrected), 0) AS corrected
FROM curation_counts
WHERE namespace = %(namespace)s

-- name: web_production_prompt
-- The production system prompt most of the namespace's latest rows carried (by
-- calls): suggest-prompt's choice over a sample read backwards along the primary
-- key, so the namespaces page costs the same at a million rows as at a thousand.
SELECT system_prompt, mode() WITHIN GROUP (ORDER BY model) AS model
FROM (SELECT system_prompt, model, times_seen FROM {table}
      WHERE namespace = %(namespace)s ORDER BY id DESC LIMIT %(sample)s) latest
WHERE system_prompt IS NOT NULL AND system_prompt <> ''
GROUP BY system_prompt
ORDER BY sum(times_seen) DESC, count(*) DESC
LIMIT 1

-- name: web_search
-- The search box: the text in the prompt or in the answer in force (curate.sql's
-- list_rows ``answer``). This expression is revision 0010's answer_trgm index's,
-- character for character: the planner matches them, so a rare term is two
-- trigram index lookups (0006's prompt_trgm and 0010's answer_trgm), OR-ed.
-- The search text comes with its LIKE wildcards and backslashes escaped (db/web.py
-- escape_like; backslash is the default ESCAPE): a substring, not a pattern.
AND (user_prompt::text ILIKE '%%' || %(search)s || '%%'
     OR coalesce(corrected_response->>'content', response->'choices'->0->'message'->>'content',
                 (response->'choices'->0->'message'->'tool_calls')::text,
                 curation_response_text(response)) ILIKE '%%' || %(search)s || '%%')

-- name: web_savepoint
-- Before each request of a session that holds a claimed row: a refused action
-- or a failed read rolls back to here, and the row stays claimed.
SAVEPOINT web_request

-- name: web_rollback_to_savepoint
ROLLBACK TO SAVEPOINT web_request
