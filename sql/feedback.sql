-- Feedback from production in psql: copy-paste snippets. Set the namespace
-- table once per session, as for sql/curate.sql:
--
--   \set t locations_openai_chat_completion
--
-- Feedback events are in the table `feedback` (one row per POST
-- /curation/v1/feedback; namespace and row_id are NULL until the call is
-- recorded); the view `feedback_by_row` counts them per row. A row's id is
-- unique across namespaces, so joining on row_id = id is enough. Each snippet
-- below is run by tests/test_feedback.py.

-- name: negative
-- Rows users disliked (at least one score below 0), most disliked first.
SELECT r.id, f.negative, f.positive, f.labels, r.user_prompt,
       r.response->'choices'->0->'message'->>'content' AS answer
FROM :"t" r
JOIN feedback_by_row f ON f.row_id = r.id
WHERE f.negative > 0
ORDER BY f.negative DESC, f.last_at DESC
LIMIT 50;

-- name: events
-- Every feedback event of a row, newest first (\set id 17).
SELECT f.created_at, f.score, f.label, f.comment, f.correction
FROM feedback f
WHERE f.row_id = :id
ORDER BY f.id DESC;

-- name: proposals
-- Rows whose proposal came from feedback, waiting for a decision
-- (accept: curation accept NS ID, reject: curation reject NS ID).
SELECT r.id, r.proposed_by, r.proposed_response->>'content' AS proposed, r.user_prompt
FROM :"t" r
WHERE r.proposed_by LIKE 'feedback #%'
ORDER BY r.proposed_at DESC;

-- name: unattached
-- Feedback whose call is not recorded (yet): the writer attaches it when it is;
-- a stream cut short or a capture set aside never is.
SELECT f.call_id, f.created_at, f.score, f.label
FROM feedback f
WHERE f.row_id IS NULL
ORDER BY f.id DESC
LIMIT 50;
