-- name: create_staging
CREATE TEMP TABLE IF NOT EXISTS capture_staging (
    ord integer NOT NULL,
    namespace text NOT NULL,
    user_prompt citext NOT NULL,
    response text NOT NULL,
    request jsonb NOT NULL,
    system_prompt text,
    model text,
    prompt_tokens integer,
    completion_tokens integer,
    latency_ms real,
    streamed boolean NOT NULL,
    upstream_request_id text,
    seen_at timestamptz NOT NULL,
    tags jsonb NOT NULL,
    rewritten boolean NOT NULL
) ON COMMIT DELETE ROWS

-- name: copy_staging
COPY capture_staging (ord, namespace, user_prompt, response, request, system_prompt, model,
                      prompt_tokens, completion_tokens, latency_ms, streamed, upstream_request_id,
                      seen_at, tags, rewritten)
FROM STDIN

-- name: insert_from_staging
-- Repeats of a user_prompt (case-insensitively, as citext compares) within the
-- batch are folded first, since ON CONFLICT may touch a row only once per
-- statement. A repeat only counts and merges tags: the first response and
-- every curation column stay as they are.
WITH grouped AS (
    SELECT DISTINCT ON (s.namespace, s.user_prompt) s.*,
           count(*) OVER w AS seen,
           max(s.seen_at) OVER w AS last_seen
    FROM capture_staging s
    WINDOW w AS (PARTITION BY s.namespace, s.user_prompt)
    ORDER BY s.namespace, s.user_prompt, s.ord
), merged_tags AS (
    SELECT s.namespace, s.user_prompt, jsonb_object_agg(e.key, e.value ORDER BY s.ord) AS tags
    FROM capture_staging s, jsonb_each(s.tags) AS e
    GROUP BY s.namespace, s.user_prompt
)
INSERT INTO openai_chat_completion AS t (
    namespace, user_prompt, response, request, system_prompt, model, prompt_tokens,
    completion_tokens, latency_ms, streamed, upstream_request_id, tags,
    first_seen_at, last_seen_at, times_seen, rewritten)
SELECT g.namespace, g.user_prompt, g.response::json, g.request, g.system_prompt, g.model,
       g.prompt_tokens, g.completion_tokens, g.latency_ms, g.streamed, g.upstream_request_id,
       coalesce(m.tags, '{}'), g.seen_at, g.last_seen, g.seen, g.rewritten
FROM grouped g
LEFT JOIN merged_tags m ON m.namespace = g.namespace AND m.user_prompt = g.user_prompt
ORDER BY g.ord
ON CONFLICT (namespace, user_prompt_key) DO UPDATE
SET times_seen = t.times_seen + excluded.times_seen,
    last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at),
    tags = t.tags || excluded.tags

-- name: get_checkpoint
SELECT segment, byte_offset FROM spool_checkpoint WHERE spool_id = %(spool_id)s

-- name: set_checkpoint
INSERT INTO spool_checkpoint (spool_id, segment, byte_offset, rows_written)
VALUES (%(spool_id)s, %(segment)s, %(offset)s, %(rows)s)
ON CONFLICT (spool_id) DO UPDATE
SET segment = excluded.segment,
    byte_offset = excluded.byte_offset,
    rows_written = spool_checkpoint.rows_written + excluded.rows_written,
    updated_at = now()

-- name: namespace_names
SELECT name FROM namespace
