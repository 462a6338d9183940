-- name: latest_dataset
SELECT id FROM dataset WHERE namespace = %(namespace)s AND format = 'chat' ORDER BY id DESC LIMIT 1

-- name: eval_rows
-- Rows to replay: given ids, or included rows (optionally only a dataset's
-- validation split, which no model was trained on). Served calls are the
-- student's own answers and never count as truth. A Responses call's earlier turns
-- come from the recorded rows, as in export_rows.
SELECT c.id, c.version, c.user_prompt::text AS user_prompt,
       CASE WHEN c.previous_response_id IS NULL THEN c.request::text
            ELSE coalesce(curation_responses_request(c.namespace, c.request), c.request)::text
       END AS request,
       c.response::text AS response, c.corrected_response::text AS corrected_response
FROM {table} c
WHERE NOT c.rewritten
  AND (%(ids)s::bigint[] IS NOT NULL OR (c.included IS NOT NULL AND c.excluded IS NULL))
  AND (%(ids)s::bigint[] IS NULL OR c.id = ANY(%(ids)s::bigint[]))
  AND (%(dataset_id)s::bigint IS NULL OR EXISTS (
        SELECT 1 FROM dataset_row d
        WHERE d.dataset_id = %(dataset_id)s AND d.row_id = c.id AND d.split = 'validation'))
ORDER BY c.id

-- name: insert_eval_run
INSERT INTO eval_run (namespace, dataset_id, rows_source, compare, baseline, models, summary)
VALUES (%(namespace)s, %(dataset_id)s, %(rows_source)s, %(compare)s, %(baseline)s, %(models)s, %(summary)s)
RETURNING id

-- name: copy_eval_results
COPY eval_result (run_id, row_id, model, matched, answer, error, latency_ms, prompt_tokens, completion_tokens)
FROM STDIN

-- name: eval_history
SELECT id, created_at, rows_source, compare, baseline, models, summary
FROM eval_run WHERE namespace = %(namespace)s ORDER BY id DESC LIMIT %(limit)s

-- name: has_clean_eval
-- An eval run in this namespace where the model answered every row.
SELECT EXISTS (
    SELECT 1 FROM eval_run r, jsonb_array_elements(r.summary->'models') m
    WHERE r.namespace = %(namespace)s AND m->>'model' = %(model)s
      AND (m->>'errors')::int = 0 AND (m->>'calls')::int > 0
) AS ok

-- name: relabel_rows
SELECT id, api,
       CASE WHEN previous_response_id IS NULL THEN request::text
            ELSE coalesce(curation_responses_request(namespace, request), request)::text
       END AS request
FROM {table}
WHERE NOT rewritten
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(ids)s::bigint[] IS NOT NULL OR (included IS NULL AND excluded IS NULL))
ORDER BY times_seen DESC, id
LIMIT %(limit)s

-- name: set_proposal
UPDATE {table} SET proposed_response = %(proposal)s::json, proposed_by = %(model)s, proposed_at = now()
WHERE id = %(id)s

-- name: accept_proposals
UPDATE {table}
SET corrected_response = proposed_response, proposed_response = NULL, included = now(), excluded = NULL
WHERE id = ANY(%(ids)s) AND proposed_response IS NOT NULL
RETURNING id

-- name: reject_proposals
UPDATE {table} SET proposed_response = NULL, proposed_by = NULL, proposed_at = NULL
WHERE id = ANY(%(ids)s) AND proposed_response IS NOT NULL
RETURNING id

-- name: set_serving
UPDATE namespace
SET serve_model = %(model)s, serve_percent = %(percent)s, serve_endpoint = %(endpoint)s,
    serve_endpoint_key_env = %(key_env)s, updated_at = now()
WHERE name = %(namespace)s

-- name: get_serving
SELECT serve_model, serve_percent, serve_endpoint, serve_endpoint_key_env FROM namespace
WHERE name = %(namespace)s

-- name: serving_table
SELECT name, serve_model, serve_percent, training_system_prompt, serve_endpoint,
       serve_endpoint_key_env, serve_shadow_percent, serve_watch_percent, shadow_per_minute,
       compare
FROM namespace
