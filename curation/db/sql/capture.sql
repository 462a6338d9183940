-- name: session_limits
-- The recorder's session: a transaction of ours left idle (its client cut off
-- mid-batch) is ended by the server, releasing its locks. Tag merges by the
-- proxy are not curation (the audit trigger skips them; the connection is the
-- writer's alone); JIT would compile the upsert's plan over every partition for
-- seconds. Set once for the session rather than in every batch.
SELECT set_config('idle_in_transaction_session_timeout', '30s', false),
       set_config('curation.source', 'proxy', false),
       set_config('jit', 'off', false)

-- name: fast_compression
-- Requests and answers are a few kB: PostgreSQL compresses each as it stores it,
-- in staging and in the table. lz4 does that several times faster than the
-- default pglz (readers decompress either); kept where the server lacks lz4.
SELECT set_config('default_toast_compression', 'lz4', false)
FROM pg_settings
WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)

-- name: create_staging
-- Rows arrive as binary COPY: text travels as it is, unescaped, and PostgreSQL
-- parses the JSON, the call id and the flags once, in the upsert (hence text
-- columns for them here).
CREATE TEMP TABLE IF NOT EXISTS capture_staging (
    ord integer NOT NULL,
    namespace text NOT NULL,
    user_prompt text NOT NULL,
    response text NOT NULL,
    request text NOT NULL,
    system_prompt text,
    model text,
    prompt_tokens integer,
    completion_tokens integer,
    latency_ms real,
    streamed boolean NOT NULL,
    upstream_request_id text,
    seen_at timestamptz NOT NULL,
    tags text NOT NULL,
    rewritten boolean NOT NULL,
    fallback_from text,
    api text NOT NULL,
    response_id text,
    previous_response_id text,
    call_id text,
    flags text,  -- the flags joined by commas (each a word of capture/flags.py)
    -- the row's unique key, as user_prompt_key computes it: folding and matching
    -- on it sorts uuids instead of comparing citext (a lower() per comparison)
    key uuid GENERATED ALWAYS AS (md5(lower(user_prompt))::uuid) STORED
) ON COMMIT DELETE ROWS

-- name: copy_staging
COPY capture_staging (ord, namespace, user_prompt, response, request, system_prompt, model,
                      prompt_tokens, completion_tokens, latency_ms, streamed, upstream_request_id,
                      seen_at, tags, rewritten, fallback_from, api, response_id,
                      previous_response_id, call_id, flags)
FROM STDIN (FORMAT BINARY)

-- name: insert_from_staging
-- Repeats of a user_prompt (case-insensitively, as citext compares: the same
-- key) within the batch are folded first, since ON CONFLICT may touch a row
-- only once per statement. A repeat only counts and merges tags: the first
-- response and every curation column stay as they are. Tags are bounded
-- (max_tags is MAX_TAGS of curation/capture/tags.py): a repeat updates the
-- values of keys the row holds, never drops one, and adds new keys, earliest
-- first, only while the row holds fewer than max_tags. Each staged call with an
-- id is then mapped to its row (a repeat's id to the row it repeats) in the same
-- statement: a placeholder left by feedback that came first is filled in, after
-- that feedback's transaction if it is still open. Returns how many calls it
-- mapped.
WITH grouped AS (
    SELECT DISTINCT ON (s.namespace, s.key) s.*,
           count(*) OVER w AS seen,
           max(s.seen_at) OVER w AS last_seen
    FROM capture_staging s
    WINDOW w AS (PARTITION BY s.namespace, s.key)
    ORDER BY s.namespace, s.key, s.ord
), tag_entries AS (
    -- each key of each prompt once: its latest value, when it first came, and the
    -- tags the row holds now (an index probe per capture, never a join the
    -- planner could turn into a scan of the partition)
    SELECT DISTINCT ON (s.namespace, s.key, e.key)
           s.namespace, s.key AS prompt_key, e.key, e.value, s.held_tags,
           min(s.ord) OVER (PARTITION BY s.namespace, s.key, e.key) AS first_ord
    FROM (SELECT c.*,
                 (SELECT o.tags FROM openai_chat_completion o
                  WHERE o.namespace = c.namespace AND o.user_prompt_key = c.key) AS held_tags
          FROM capture_staging c
          WHERE c.tags <> '{}') AS s,
         jsonb_each(s.tags::jsonb) AS e
    ORDER BY s.namespace, s.key, e.key, s.ord DESC
), ranked_tags AS (
    -- the keys the row holds stay; the room left goes to the earliest new keys
    SELECT e.*, coalesce(e.held_tags ? e.key, false) AS held,
           coalesce((SELECT count(*) FROM jsonb_object_keys(e.held_tags)), 0) AS n_held,
           row_number() OVER (PARTITION BY e.namespace, e.prompt_key,
                                           coalesce(e.held_tags ? e.key, false)
                              ORDER BY e.first_ord, e.key) AS rank
    FROM tag_entries e
), merged_tags AS (
    SELECT namespace, prompt_key, jsonb_object_agg(key, value) AS tags
    FROM ranked_tags
    WHERE held OR rank <= %(max_tags)s::integer - n_held
    GROUP BY namespace, prompt_key
), written AS (
    INSERT INTO openai_chat_completion AS t (
        namespace, user_prompt, response, request, system_prompt, model, prompt_tokens,
        completion_tokens, latency_ms, streamed, upstream_request_id, tags,
        first_seen_at, last_seen_at, times_seen, rewritten, fallback_from, api, response_id,
        previous_response_id, flags)
    SELECT g.namespace, g.user_prompt, g.response::json, g.request::jsonb, g.system_prompt, g.model,
           g.prompt_tokens, g.completion_tokens, g.latency_ms, g.streamed, g.upstream_request_id,
           coalesce(m.tags, '{}'), g.seen_at, g.last_seen, g.seen, g.rewritten, g.fallback_from,
           g.api, g.response_id, g.previous_response_id, string_to_array(g.flags, ',')
    FROM grouped g
    LEFT JOIN merged_tags m ON m.namespace = g.namespace AND m.prompt_key = g.key
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
    RETURNING t.id, t.namespace, t.user_prompt_key
), mapped AS (
    INSERT INTO recorded_call AS c (id, namespace, row_id, recorded_at)
    SELECT DISTINCT ON (s.call_id::uuid) s.call_id::uuid, s.namespace, w.id, s.seen_at
    FROM capture_staging s
    JOIN written w ON w.namespace = s.namespace AND w.user_prompt_key = s.key
    WHERE s.call_id IS NOT NULL
    ORDER BY s.call_id::uuid, s.ord
    ON CONFLICT (id) DO UPDATE
    SET namespace = excluded.namespace, row_id = excluded.row_id,
        recorded_at = excluded.recorded_at
    WHERE c.row_id IS NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS written, (SELECT count(*) FROM mapped) AS mapped

-- name: attach_feedback
-- Then feedback that came before its call was recorded is attached (a statement
-- of its own, so it sees feedback committed while the one above waited for it),
-- driven by the batch's call ids (a probe each).
UPDATE feedback f
SET namespace = c.namespace, row_id = c.row_id
FROM (SELECT DISTINCT call_id::uuid AS call_id FROM capture_staging
      WHERE call_id IS NOT NULL) AS b
JOIN recorded_call c ON c.id = b.call_id
WHERE f.call_id = b.call_id AND f.row_id IS NULL AND c.row_id IS NOT NULL
RETURNING f.id, f.namespace, f.row_id, f.correction::text AS correction

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
