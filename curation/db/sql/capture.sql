-- name: session_limits
-- The recorder's session: a transaction of ours left idle (its client cut off
-- mid-batch) is ended by the server, releasing its locks.
SET idle_in_transaction_session_timeout = '30s'

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
    rewritten boolean NOT NULL,
    fallback_from text,
    api text NOT NULL,
    response_id text,
    previous_response_id text,
    call_id uuid,
    flags text[]
) ON COMMIT DELETE ROWS

-- name: copy_staging
COPY capture_staging (ord, namespace, user_prompt, response, request, system_prompt, model,
                      prompt_tokens, completion_tokens, latency_ms, streamed, upstream_request_id,
                      seen_at, tags, rewritten, fallback_from, api, response_id,
                      previous_response_id, call_id, flags)
FROM STDIN

-- name: insert_from_staging
-- Repeats of a user_prompt (case-insensitively, as citext compares) within the
-- batch are folded first, since ON CONFLICT may touch a row only once per
-- statement. A repeat only counts and merges tags: the first response and
-- every curation column stay as they are. Tags are bounded (max_tags is
-- MAX_TAGS of curation/capture/tags.py): a repeat updates the values of keys
-- the row holds, never drops one, and adds new keys, earliest first, only while
-- the row holds fewer than max_tags.
WITH grouped AS (
    SELECT DISTINCT ON (s.namespace, s.user_prompt) s.*,
           count(*) OVER w AS seen,
           max(s.seen_at) OVER w AS last_seen
    FROM capture_staging s
    WINDOW w AS (PARTITION BY s.namespace, s.user_prompt)
    ORDER BY s.namespace, s.user_prompt, s.ord
), tag_entries AS (
    -- each key of each prompt once: its latest value, when it first came, and the
    -- tags the row holds now (an index probe per capture, never a join the
    -- planner could turn into a scan of the partition)
    SELECT DISTINCT ON (s.namespace, s.user_prompt, e.key)
           s.namespace, s.user_prompt, e.key, e.value, s.held_tags,
           min(s.ord) OVER (PARTITION BY s.namespace, s.user_prompt, e.key) AS first_ord
    FROM (SELECT c.*,
                 (SELECT o.tags FROM openai_chat_completion o
                  WHERE o.namespace = c.namespace
                    AND o.user_prompt_key = md5(lower(c.user_prompt::text))::uuid) AS held_tags
          FROM capture_staging c) AS s,
         jsonb_each(s.tags) AS e
    ORDER BY s.namespace, s.user_prompt, e.key, s.ord DESC
), ranked_tags AS (
    -- the keys the row holds stay; the room left goes to the earliest new keys
    SELECT e.*, coalesce(e.held_tags ? e.key, false) AS held,
           coalesce((SELECT count(*) FROM jsonb_object_keys(e.held_tags)), 0) AS n_held,
           row_number() OVER (PARTITION BY e.namespace, e.user_prompt,
                                           coalesce(e.held_tags ? e.key, false)
                              ORDER BY e.first_ord, e.key) AS rank
    FROM tag_entries e
), merged_tags AS (
    SELECT namespace, user_prompt, jsonb_object_agg(key, value) AS tags
    FROM ranked_tags
    WHERE held OR rank <= %(max_tags)s::integer - n_held
    GROUP BY namespace, user_prompt
)
INSERT INTO openai_chat_completion AS t (
    namespace, user_prompt, response, request, system_prompt, model, prompt_tokens,
    completion_tokens, latency_ms, streamed, upstream_request_id, tags,
    first_seen_at, last_seen_at, times_seen, rewritten, fallback_from, api, response_id,
    previous_response_id, flags)
SELECT g.namespace, g.user_prompt, g.response::json, g.request, g.system_prompt, g.model,
       g.prompt_tokens, g.completion_tokens, g.latency_ms, g.streamed, g.upstream_request_id,
       coalesce(m.tags, '{}'), g.seen_at, g.last_seen, g.seen, g.rewritten, g.fallback_from,
       g.api, g.response_id, g.previous_response_id, g.flags
FROM grouped g
LEFT JOIN merged_tags m ON m.namespace = g.namespace AND m.user_prompt = g.user_prompt
ORDER BY g.ord
ON CONFLICT (namespace, user_prompt_key) DO UPDATE
SET times_seen = t.times_seen + excluded.times_seen,
    last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at),
    -- the cap again, against the row as locked (a curator may have tagged it meanwhile)
    tags = t.tags || (
        SELECT coalesce(jsonb_object_agg(n.key, n.value), '{}')
        FROM (SELECT e.key, e.value, t.tags ? e.key AS held,
                     row_number() OVER (PARTITION BY t.tags ? e.key ORDER BY e.key) AS rank
              FROM jsonb_each(excluded.tags) AS e) AS n
        WHERE n.held
           OR n.rank <= %(max_tags)s::integer - (SELECT count(*) FROM jsonb_object_keys(t.tags)))
-- each row written, so the writer maps call ids to rows without looking them up
RETURNING t.id, t.namespace, t.user_prompt_key

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
