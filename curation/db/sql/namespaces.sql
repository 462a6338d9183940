-- name: create_namespace
SELECT curation_create_namespace(%(name)s, %(training_system_prompt)s, %(base_model)s) AS created

-- name: list_namespaces
SELECT n.name, n.training_system_prompt, n.base_model, n.backend, n.serve_model, n.serve_percent,
       n.serve_endpoint, n.serve_endpoint_key_env, n.created_at, n.updated_at
FROM namespace n
ORDER BY n.name

-- name: get_namespace
SELECT n.name, n.training_system_prompt, n.base_model, n.backend, n.serve_model, n.serve_percent,
       n.serve_endpoint, n.serve_endpoint_key_env, n.created_at, n.updated_at
FROM namespace n
WHERE n.name = %(name)s

-- name: namespace_counts
SELECT namespace,
       count(*) AS rows,
       coalesce(sum(times_seen), 0) AS calls,
       count(*) FILTER (WHERE included IS NOT NULL AND excluded IS NULL) AS included,
       count(*) FILTER (WHERE excluded IS NOT NULL) AS excluded,
       count(*) FILTER (WHERE included IS NULL AND excluded IS NULL) AS pending
FROM openai_chat_completion
WHERE namespace = %(name)s
GROUP BY namespace

-- name: update_namespace
UPDATE namespace
SET training_system_prompt = CASE WHEN %(set_prompt)s THEN %(training_system_prompt)s ELSE training_system_prompt END,
    base_model = CASE WHEN %(set_model)s THEN %(base_model)s ELSE base_model END,
    backend = CASE WHEN %(set_backend)s THEN %(backend)s ELSE backend END,
    updated_at = now()
WHERE name = %(name)s
RETURNING name

-- name: common_system_prompt
-- The production system prompt most calls of a namespace carried (weighted by times_seen),
-- with how many rows and calls carry it, how many carry any, and the model that most often
-- answered it (to count its tokens when the namespace names no base model).
SELECT system_prompt,
       count(*) AS rows,
       sum(times_seen) AS calls,
       sum(count(*)) OVER () AS rows_with_a_prompt,
       count(*) OVER () AS distinct_prompts,
       mode() WITHIN GROUP (ORDER BY model) AS model
FROM openai_chat_completion
WHERE namespace = %(name)s AND system_prompt IS NOT NULL AND system_prompt <> ''
GROUP BY system_prompt
ORDER BY calls DESC, rows DESC, min(id)
LIMIT 1
