-- name: export_rows
-- Included, not excluded rows, oldest first, read with binary COPY (db/export.py):
-- id and version as bigint, everything else as text, json as text so the exporter
-- parses it with orjson (much faster than per-row json.loads). A Responses call
-- that continues an earlier response gets its earlier turns from the recorded rows
-- (curation_responses_request; unchanged, so export skips it, when one is missing).
SELECT id, version::bigint AS version, user_prompt::text AS user_prompt,
       CASE WHEN previous_response_id IS NULL THEN request::text
            ELSE coalesce(curation_responses_request(namespace, request), request)::text
       END AS request,
       response::text AS response, corrected_response::text AS corrected_response
FROM {table}
WHERE included IS NOT NULL
  AND excluded IS NULL
  AND NOT rewritten  -- the served student's own answers never train it
  AND (flags IS NULL OR flags = '{{}}' OR flags_accepted_at IS NOT NULL)  -- flags.sql: export_flagged
  AND (%(since)s::timestamptz IS NULL OR included >= %(since)s::timestamptz)
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(tag_key)s::text IS NULL OR tags ->> %(tag_key)s::text = %(tag_value)s::text)
ORDER BY id

-- name: find_dataset
SELECT id FROM dataset
WHERE namespace = %(namespace)s AND sha256 = %(sha256)s AND base_model = %(base_model)s AND format = %(format)s
ORDER BY id DESC LIMIT 1

-- name: insert_dataset
INSERT INTO dataset (namespace, format, base_model, system_prompt, sha256, train_sha256,
                     validation_sha256, train_examples, validation_examples, train_tokens,
                     validation_tokens, skipped, manifest)
VALUES (%(namespace)s, %(format)s, %(base_model)s, %(system_prompt)s, %(sha256)s, %(train_sha256)s,
        %(validation_sha256)s, %(train_examples)s, %(validation_examples)s, %(train_tokens)s,
        %(validation_tokens)s, %(skipped)s, %(manifest)s)
RETURNING id

-- name: copy_dataset_rows
COPY dataset_row (dataset_id, namespace, row_id, row_version, split, tokens) FROM STDIN
