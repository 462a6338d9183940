-- Automatic flags (capture/flags.py; revision 0012). Flagged rows are few: the
-- partial index openai_chat_completion_flagged_idx holds only them, and serves
-- every query here that says flags <> '{}'.

-- `curation list NS --flag REASON|any`: filters of list_rows (curate.sql).
-- name: list_flag
AND flags @> ARRAY[%(flag)s::text] AND flags <> '{}'
-- name: list_flag_any
AND flags <> '{}'

-- name: flag_counts
-- Rows per namespace and reason (stats), read from the flagged rows alone.
SELECT c.namespace, f.reason, count(*) AS n
FROM openai_chat_completion c, unnest(c.flags) AS f(reason)
WHERE c.flags <> '{}' AND (%(namespace)s::text IS NULL OR c.namespace = %(namespace)s)
GROUP BY c.namespace, f.reason
ORDER BY c.namespace, f.reason

-- name: unaccepted_flags
-- Rows among ids whose flags no curator accepted yet (include refuses them without
-- --accept-flags).
SELECT id, flags FROM {table}
WHERE namespace = %(namespace)s AND id = ANY(%(ids)s)
  AND flags <> '{{}}' AND flags_accepted_at IS NULL
ORDER BY id

-- name: accept_flags
UPDATE {table}
SET flags_accepted_by = curation_actor(), flags_accepted_at = now()
WHERE namespace = %(namespace)s AND id = ANY(%(ids)s) AND flags <> '{{}}'
  AND flags_accepted_at IS NULL

-- name: export_flagged
-- The rows export_rows would take but for their flags (export.sql): reported as skipped.
SELECT id, flags FROM {table}
WHERE included IS NOT NULL
  AND excluded IS NULL
  AND NOT rewritten
  AND flags <> '{{}}' AND flags_accepted_at IS NULL
  AND (%(since)s::timestamptz IS NULL OR included >= %(since)s::timestamptz)
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(tag_key)s::text IS NULL OR tags ->> %(tag_key)s::text = %(tag_value)s::text)
ORDER BY id

-- name: unflagged_batch
-- Rows recorded before flags existed (flags IS NULL), after a keyset position;
-- openai_chat_completion_flags_unset_idx finds them.
SELECT id, request::text AS request, response::text AS response, rewritten FROM {table}
WHERE namespace = %(namespace)s AND flags IS NULL AND id > %(after)s
ORDER BY id
LIMIT %(batch)s

-- name: set_flags
-- One batch's flags, by id (the proxy's own role, not a curator's: flags are its findings).
-- Each row's reasons come comma-joined ('' for none): arrays of arrays must be even.
UPDATE {table} AS t SET flags = string_to_array(v.joined, ',')
FROM unnest(%(ids)s::bigint[], %(flags)s::text[]) AS v(id, joined)
WHERE t.namespace = %(namespace)s AND t.id = v.id AND t.flags IS NULL
