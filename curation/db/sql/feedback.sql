-- Feedback from production: call ids -> rows, feedback events, proposals.
-- Why the statements are split as they are: see curation/db/feedback.py.

-- name: feedback_session
-- The proxy's feedback connection: a request never waits on PostgreSQL for long,
-- and a transaction of ours cut off midway never holds a writer up for long.
SET statement_timeout = '5s'; SET idle_in_transaction_session_timeout = '30s'

-- name: feedback_claim_call
-- The call's mapping, or a placeholder for a call not recorded yet. If a writer
-- is recording the call right now, this waits for its commit.
INSERT INTO recorded_call (id) VALUES (%(call_id)s) ON CONFLICT (id) DO NOTHING

-- name: feedback_insert
INSERT INTO feedback (call_id, namespace, row_id, score, label, comment, correction)
SELECT c.id, c.namespace, c.row_id, %(score)s, %(label)s, %(comment)s, %(correction)s::json
FROM recorded_call c
WHERE c.id = %(call_id)s
RETURNING id, namespace, row_id

-- name: feedback_as_curator
-- Proposals from feedback show in curation_audit as changed by "feedback".
SELECT set_config('curation.curator', %(curator)s, true)

-- name: feedback_propose
-- A correction from feedback becomes the row's proposal, replacing an earlier
-- one from feedback but never a teacher's (curation relabel) still waiting.
UPDATE openai_chat_completion
SET proposed_response = %(correction)s::json,
    proposed_by = 'feedback #' || %(feedback_id)s::bigint,
    proposed_at = now()
WHERE namespace = %(namespace)s AND id = %(row_id)s
  AND (proposed_response IS NULL OR proposed_by LIKE 'feedback #%%')
RETURNING id

-- name: feedback_counts
SELECT count(*) FILTER (WHERE score > 0) AS positive,
       count(*) FILTER (WHERE score < 0) AS negative,
       count(*) AS total,
       count(correction) AS corrections
FROM feedback
WHERE namespace = %(namespace)s AND row_id = %(row_id)s

-- name: feedback_events
SELECT id, created_at, score, label, comment, correction
FROM feedback
WHERE namespace = %(namespace)s AND row_id = %(row_id)s
ORDER BY id DESC
LIMIT %(limit)s

-- name: feedback_counts_of_rows
-- The counts `curation list NS --feedback ...` shows beside its rows.
SELECT row_id,
       count(*) FILTER (WHERE score > 0) AS positive,
       count(*) FILTER (WHERE score < 0) AS negative
FROM feedback
WHERE namespace = %(namespace)s AND row_id = ANY(%(ids)s)
GROUP BY row_id

-- `curation list NS --feedback negative|positive|any`: filters of list_rows
-- (curate.sql), rows with at least one such event (feedback_row_idx finds them).
-- name: list_feedback_negative
AND id IN (SELECT f.row_id FROM feedback f WHERE f.namespace = %(namespace)s AND f.score < 0)
-- name: list_feedback_positive
AND id IN (SELECT f.row_id FROM feedback f WHERE f.namespace = %(namespace)s AND f.score > 0)
-- name: list_feedback_any
AND id IN (SELECT f.row_id FROM feedback f WHERE f.namespace = %(namespace)s)
