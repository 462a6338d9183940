-- Shadow and watch comparisons and the serving tallies, written by the proxy
-- (curation/db/shadow.py): telemetry, never on a client's request path.

-- name: shadow_session
-- The proxy's telemetry connection: a write waits on PostgreSQL briefly or not at all.
SET statement_timeout = '5s'; SET idle_in_transaction_session_timeout = '30s'

-- name: shadow_insert
-- created_at is when the background call was launched (db/shadow.py), so a comparison
-- counts in the rollout stage it was launched under, not the one its flush lands in.
INSERT INTO shadow_comparison (
    call_id, namespace, kind, teacher_model, student_model, teacher_answer, student_answer,
    agreed, error, teacher_ms, student_ms, teacher_prompt_tokens, teacher_completion_tokens,
    student_prompt_tokens, student_completion_tokens, call_failed, created_at
) VALUES (
    %(call_id)s, %(namespace)s, %(kind)s, %(teacher_model)s, %(student_model)s,
    %(teacher_answer)s::json, %(student_answer)s::json, %(agreed)s, %(error)s, %(teacher_ms)s,
    %(student_ms)s, %(teacher_prompt_tokens)s, %(teacher_completion_tokens)s,
    %(student_prompt_tokens)s, %(student_completion_tokens)s, %(call_failed)s,
    now() - make_interval(secs => %(age_s)s)
)

-- name: serving_tally_add
-- Counts are increments: every proxy adds its own, several flushes to the same bucket add up.
INSERT INTO serving_tally AS t (
    namespace, proxy, bucket, student_calls, student_failures, background_calls,
    background_dropped
) VALUES (
    %(namespace)s, %(proxy)s, %(bucket)s, %(student_calls)s, %(student_failures)s,
    %(background_calls)s, %(background_dropped)s
)
ON CONFLICT (namespace, proxy, bucket) DO UPDATE
SET student_calls = t.student_calls + excluded.student_calls,
    student_failures = t.student_failures + excluded.student_failures,
    background_calls = t.background_calls + excluded.background_calls,
    background_dropped = t.background_dropped + excluded.background_dropped
