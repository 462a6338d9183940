-- name: rollout_try_lock
-- One decider across every proxy: a session lock, held until its connection closes
-- (a proxy that dies releases it, and the next one to ask takes over).
SELECT pg_try_advisory_lock(hashtext('curation_rollout')) AS locked

-- name: rollout_session
-- The decider's session (db/keepalive.py): the server ends it when its host goes
-- silent (keepalives, ~30 s) or when it idles past %(idle)s (the decider queries
-- every tick, so only a stuck or vanished decider idles that long), which releases
-- the advisory lock for the next decider. No query of the decider waits past 5 s.
SELECT set_config('tcp_keepalives_idle', %(tcp_keepalives_idle)s, false),
       set_config('tcp_keepalives_interval', %(tcp_keepalives_interval)s, false),
       set_config('tcp_keepalives_count', %(tcp_keepalives_count)s, false),
       set_config('tcp_user_timeout', %(tcp_user_timeout)s, false),
       set_config('statement_timeout', '5s', false),
       set_config('idle_session_timeout', %(idle)s, false)

-- name: rollout_active
SELECT name, serve_model, serve_percent, rollout, rollout->>'stage' AS stage,
       rollout->>'since' AS since
FROM namespace
WHERE rollout IS NOT NULL
ORDER BY name

-- name: rollout_stats
-- The numbers behind one decision, all since the stage began (policy.py): the stage's
-- last %(samples)s answered comparisons and its last %(window)s, the student's failed
-- background calls (shadow; timeout, status, connect) over the same spans (the whole
-- stage while it has fewer), and the student calls the proxies counted in the 10-second
-- buckets that began since the stage did, over the last %(error_window_s)s seconds (the
-- bucket the stage began in is left out: it may hold the previous stage's calls).
-- Indexes: shadow_comparison_answered_idx yields the comparisons newest first without
-- a sort, shadow_comparison_failed_idx the failures, serving_tally_namespace_idx the tallies.
WITH stage AS (
    SELECT agreed, created_at FROM shadow_comparison
    WHERE namespace = %(namespace)s AND student_model = %(model)s
      AND created_at >= %(since)s::timestamptz AND agreed IS NOT NULL
    ORDER BY created_at DESC
    LIMIT %(samples)s
), recent AS (
    SELECT agreed, created_at FROM shadow_comparison
    WHERE namespace = %(namespace)s AND student_model = %(model)s
      AND created_at >= %(since)s::timestamptz AND agreed IS NOT NULL
    ORDER BY created_at DESC
    LIMIT %(window)s
), failed AS (
    SELECT created_at FROM shadow_comparison
    WHERE namespace = %(namespace)s AND student_model = %(model)s
      AND created_at >= %(since)s::timestamptz AND call_failed AND kind = 'shadow'
), tally AS (
    SELECT coalesce(sum(student_calls), 0) AS student_calls,
           coalesce(sum(student_failures), 0) AS student_failures
    FROM serving_tally
    WHERE namespace = %(namespace)s
      AND bucket >= greatest(%(since)s::timestamptz,
                             now() - make_interval(secs => %(error_window_s)s))
)
SELECT (SELECT count(*) FROM stage) AS samples,
       (SELECT count(*) FILTER (WHERE agreed) FROM stage) AS agreed,
       (SELECT count(*) FROM recent) AS window_samples,
       (SELECT count(*) FILTER (WHERE agreed) FROM recent) AS window_agreed,
       (SELECT count(*) FROM failed WHERE created_at >= (
            SELECT CASE WHEN count(*) < %(samples)s THEN %(since)s::timestamptz
                        ELSE min(created_at) END FROM stage)) AS errors,
       (SELECT count(*) FROM failed WHERE created_at >= (
            SELECT CASE WHEN count(*) < %(window)s THEN %(since)s::timestamptz
                        ELSE min(created_at) END FROM recent)) AS window_errors,
       tally.student_calls, tally.student_failures
FROM tally

-- name: rollout_prune_tally
-- The decider's housekeeping: tallies older than a day are no one's window any more.
WITH gone AS (
    DELETE FROM serving_tally WHERE bucket < now() - interval '1 day' RETURNING 1
)
SELECT count(*) AS pruned FROM gone

-- name: rollout_apply
-- The decider's step, in one statement (one transaction): the new shares and stage,
-- and its history row. Only if the rollout is still where the decider read it: a
-- change by hand in between (curation serve) wins, and nothing is written.
WITH changed AS (
    UPDATE namespace
    SET serve_percent = %(serve)s, serve_shadow_percent = %(shadow)s,
        serve_watch_percent = %(watch)s,
        rollout = rollout || jsonb_build_object('stage', %(to_stage)s::text, 'since', now()),
        updated_at = now()
    WHERE name = %(namespace)s AND rollout->>'stage' = %(from_stage)s
      AND rollout->>'since' = %(since)s
    RETURNING name, serve_model
)
INSERT INTO rollout_step (namespace, model, from_percent, to_percent, from_stage, to_stage,
                          reason, agreement, samples, error_rate, decided_by)
SELECT name, serve_model, %(from_percent)s, %(serve)s, %(from_stage)s, %(to_stage)s,
       %(reason)s, %(agreement)s, %(samples)s, %(error_rate)s, %(decided_by)s
FROM changed
RETURNING id

-- name: serve_settings_for_update
SELECT name, serve_model, serve_percent, serve_shadow_percent, serve_watch_percent,
       shadow_per_minute, serve_endpoint, serve_endpoint_key_env, compare, rollout,
       rollout->>'stage' AS stage
FROM namespace
WHERE name = %(namespace)s
FOR UPDATE

-- name: serve_set
-- A change through curation serve: the shares, and the rollout (NULL: by hand; a
-- new rollout's stage starts now).
UPDATE namespace
SET serve_model = %(model)s, serve_endpoint = %(endpoint)s,
    serve_endpoint_key_env = %(key_env)s, serve_percent = %(serve)s,
    serve_shadow_percent = %(shadow)s, serve_watch_percent = %(watch)s,
    rollout = %(rollout)s::jsonb || jsonb_build_object('since', now()),
    updated_at = now()
WHERE name = %(namespace)s

-- name: serve_set_budget
UPDATE namespace SET shadow_per_minute = %(per_minute)s, updated_at = now()
WHERE name = %(namespace)s

-- name: rollout_step_insert
INSERT INTO rollout_step (namespace, model, from_percent, to_percent, from_stage, to_stage,
                          reason, decided_by)
VALUES (%(namespace)s, %(model)s, %(from_percent)s, %(to_percent)s, %(from_stage)s,
        %(to_stage)s, %(reason)s, %(decided_by)s)

-- name: rollout_history
SELECT id, at, model, from_stage, to_stage, from_percent, to_percent, reason, agreement,
       samples, error_rate, decided_by
FROM rollout_step
WHERE namespace = %(namespace)s
ORDER BY id DESC
LIMIT %(limit)s

-- name: serve_live
-- What curation serve NS shows: agreement over the last %(last)s comparisons and the
-- last hour, both models' median latency and tokens per call, over the last hour.
WITH last_n AS (
    SELECT agreed FROM shadow_comparison
    WHERE namespace = %(namespace)s AND student_model = %(model)s AND agreed IS NOT NULL
    ORDER BY created_at DESC
    LIMIT %(last)s
), hour AS (
    SELECT * FROM shadow_comparison
    WHERE namespace = %(namespace)s AND student_model = %(model)s
      AND created_at >= now() - interval '1 hour'
)
SELECT (SELECT count(*) FROM last_n) AS last_samples,
       (SELECT count(*) FILTER (WHERE agreed) FROM last_n) AS last_agreed,
       count(*) FILTER (WHERE agreed IS NOT NULL) AS hour_samples,
       count(*) FILTER (WHERE agreed) AS hour_agreed,
       count(*) FILTER (WHERE agreed IS NULL) AS hour_errors,
       mode() WITHIN GROUP (ORDER BY teacher_model) AS teacher_model,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY teacher_ms) AS teacher_p50_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY student_ms) AS student_p50_ms,
       avg(teacher_prompt_tokens)::float8 AS teacher_tokens_in,
       avg(teacher_completion_tokens)::float8 AS teacher_tokens_out,
       avg(student_prompt_tokens)::float8 AS student_tokens_in,
       avg(student_completion_tokens)::float8 AS student_tokens_out
FROM hour

-- name: serve_tally_hour
SELECT coalesce(sum(student_calls), 0) AS student_calls,
       coalesce(sum(student_failures), 0) AS student_failures,
       coalesce(sum(background_calls), 0) AS background_calls,
       coalesce(sum(background_dropped), 0) AS background_dropped
FROM serving_tally
WHERE namespace = %(namespace)s AND bucket >= now() - interval '1 hour'

-- name: set_compare
UPDATE namespace SET compare = %(compare)s, updated_at = now() WHERE name = %(namespace)s

-- name: get_compare
SELECT compare FROM namespace WHERE name = %(namespace)s

-- name: serve_settings
SELECT name, serve_model, serve_percent, serve_shadow_percent, serve_watch_percent,
       shadow_per_minute, serve_endpoint, serve_endpoint_key_env, compare, rollout,
       rollout->>'stage' AS stage
FROM namespace
WHERE name = %(namespace)s

-- name: list_disagreements
-- list_rows' filter and order for curation list --disagreements: rows a live student
-- disagreed on (shadow_disagreement), the latest disagreement first.
AND id IN (SELECT d.row_id FROM shadow_disagreement d WHERE d.namespace = %(namespace)s)
-- name: list_last_disagreement
(SELECT max(d.created_at) FROM shadow_disagreement d WHERE d.row_id = id) DESC NULLS LAST, id DESC

-- name: next_disagreement
-- curation review --disagreements: the pending row a student disagreed on most recently,
-- that nobody else is looking at (as next_pending).
SELECT *, user_prompt::text AS user_prompt, 'pending' AS state FROM {table}
WHERE namespace = %(namespace)s AND included IS NULL AND excluded IS NULL
  AND NOT (id = ANY(%(skip)s))
  AND id IN (SELECT d.row_id FROM shadow_disagreement d WHERE d.namespace = %(namespace)s)
ORDER BY (SELECT max(d.created_at) FROM shadow_disagreement d WHERE d.row_id = id) DESC, id
LIMIT 1
FOR UPDATE SKIP LOCKED

-- name: last_disagreement
SELECT student_model, student_answer, teacher_answer, kind, created_at
FROM shadow_disagreement
WHERE namespace = %(namespace)s AND row_id = %(id)s
ORDER BY created_at DESC
LIMIT 1
