-- Curating in psql: copy-paste snippets. Set the table once per session:
--
--   \set t locations_openai_chat_completion
--
-- Every change is recorded in curation_audit (by trigger) with your database
-- login, and as changed_by the name you SET curation.curator to (else the
-- login); `curation history locations ID` or the last snippet shows it.
-- Each snippet below is run by tests/test_curate.py.

-- name: pending
-- Rows waiting for a decision, most seen first, with the answer's text
-- (curation_response_text reads a Responses API row's answer).
SELECT id, times_seen, api, user_prompt,
       coalesce(response->'choices'->0->'message'->>'content',
                curation_response_text(response)) AS answer
FROM :"t"
WHERE included IS NULL AND excluded IS NULL
ORDER BY times_seen DESC, id
LIMIT 50;

-- name: include_ids
-- Include rows by id (set ids first: \set ids 12,15).
UPDATE :"t" SET included = now(), excluded = NULL WHERE id IN (:ids);

-- name: include_pattern
-- Include every pending row whose prompt matches a pattern (\set pattern '%paris%').
UPDATE :"t" SET included = now()
WHERE user_prompt ILIKE :'pattern' AND included IS NULL AND excluded IS NULL;

-- name: exclude_with_reason
-- Reject rows, saying why (\set ids 18 and \set reason 'asks for a joke').
UPDATE :"t" SET excluded = now(), included = NULL, note = :'reason' WHERE id IN (:ids);

-- name: correct
-- Store a fixed answer (the original stays in response; exports use the correction)
-- and include the row (\set id 17 and \set answer '["Lyon", "Berlin"]').
UPDATE :"t"
SET corrected_response = json_build_object('role', 'assistant', 'content', :'answer'),
    included = now(), excluded = NULL
WHERE id = :id;

-- name: undo
-- Undo decisions: back to pending, correction removed (\set ids 12,15).
UPDATE :"t" SET included = NULL, excluded = NULL, corrected_response = NULL WHERE id IN (:ids);

-- name: counts
-- How far curation is.
SELECT count(*) FILTER (WHERE included IS NULL AND excluded IS NULL) AS pending,
       count(*) FILTER (WHERE included IS NOT NULL AND excluded IS NULL) AS included,
       count(*) FILTER (WHERE excluded IS NOT NULL) AS excluded,
       count(*) FILTER (WHERE corrected_response IS NOT NULL) AS corrected,
       sum(times_seen) AS calls
FROM :"t";

-- name: history
-- Who changed what, newest first (\set id 17).
SELECT changed_at, changed_by, login, column_name, old_value, new_value
FROM curation_audit
WHERE namespace = (SELECT namespace FROM :"t" LIMIT 1) AND row_id = :id
ORDER BY id DESC;
