"""The Responses API recorded beside chat completions (issue 13).

A row says which API carried it (``api``). A Responses row keeps the
Response's id (``response_id``, indexed per namespace) and the id of the
earlier response it continues (``previous_response_id``): OpenAI keeps those
earlier turns, so the request alone is not the conversation.
``curation_responses_request`` rebuilds it from the recorded rows (export,
eval and relabel read requests through it); where an earlier turn was not
recorded it returns NULL, and export skips the row saying so.
``curation_response_text`` is a Response's answer as text, for psql.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE openai_chat_completion
    ADD COLUMN api text NOT NULL DEFAULT 'chat.completions'
        CONSTRAINT openai_chat_completion_api_check CHECK (api IN ('chat.completions', 'responses')),
    ADD COLUMN response_id text,
    ADD COLUMN previous_response_id text;
CREATE INDEX openai_chat_completion_response_id_idx
    ON openai_chat_completion (namespace, response_id) WHERE response_id IS NOT NULL;

DO $$
DECLARE
    part regclass;
BEGIN
    COMMENT ON COLUMN openai_chat_completion.api IS 'The API the call came through: chat.completions (POST /v1/chat/completions) or responses (POST /v1/responses; request holds instructions and input, response the Response object).';
    COMMENT ON COLUMN openai_chat_completion.response_id IS 'Responses API: the id of the recorded Response (resp_...), which a later turn names as its previous_response_id.';
    COMMENT ON COLUMN openai_chat_completion.previous_response_id IS 'Responses API: the earlier response this call continues; its turns are not in request. curation_responses_request(namespace, request) rebuilds them from the recorded rows, or is NULL when one was not recorded (export skips such rows).';
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass LOOP
        PERFORM curation_copy_comments(part);
    END LOOP;
END $$;

-- A Responses input as a list of items: a string is one user message.
CREATE FUNCTION curation_responses_items(input jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(input)
        WHEN 'array' THEN input
        WHEN 'string' THEN jsonb_build_array(jsonb_build_object('role', 'user', 'content', input))
        ELSE '[]'::jsonb
    END
$$;

-- The request with the turns OpenAI kept for it (previous_response_id, followed back)
-- put in front of its input, as the recorded rows have them: each earlier request's
-- input, then that response's output. NULL when an earlier turn is not a recorded
-- row of the namespace (never recorded, or a repeat of a recorded prompt, whose first
-- answer is the one kept), or kept in a way no row shows (conversation, prompt).
CREATE FUNCTION curation_responses_request(p_namespace text, p_request jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    items jsonb := curation_responses_items(p_request->'input');
    previous text := p_request->>'previous_response_id';
    earlier record;
    depth integer := 0;
BEGIN
    WHILE previous IS NOT NULL LOOP
        depth := depth + 1;
        IF depth > 1000 THEN
            RETURN NULL;  -- a loop of ids, or a conversation longer than any real one
        END IF;
        SELECT c.request, c.response INTO earlier
        FROM openai_chat_completion c
        WHERE c.namespace = p_namespace AND c.response_id = previous AND c.api = 'responses'
        ORDER BY c.id LIMIT 1;
        IF NOT FOUND OR earlier.request ? 'conversation' OR earlier.request ? 'prompt' THEN
            RETURN NULL;
        END IF;
        items := curation_responses_items(earlier.request->'input')
            || CASE WHEN json_typeof(earlier.response->'output') = 'array'
                    THEN (earlier.response->'output')::jsonb ELSE '[]'::jsonb END
            || items;
        previous := earlier.request->>'previous_response_id';
    END LOOP;
    RETURN (p_request - 'previous_response_id') || jsonb_build_object('input', items);
EXCEPTION WHEN data_exception THEN
    RETURN NULL;  -- an earlier row whose JSON jsonb cannot hold: not rebuilt
END $$;
COMMENT ON FUNCTION curation_responses_request(text, jsonb) IS
    'A Responses request with its earlier turns (previous_response_id) rebuilt from the namespace''s recorded rows; NULL when one was not recorded.';

-- What a Responses row answered, as text (its function calls as JSON when it has
-- no text); NULL for chat rows. For psql: SELECT curation_response_text(response) ...
CREATE FUNCTION curation_response_text(response json) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    WITH items AS (
        SELECT o.item, o.i
        FROM json_array_elements(CASE WHEN json_typeof(response->'output') = 'array'
                                      THEN response->'output' ELSE '[]'::json END)
             WITH ORDINALITY AS o(item, i)
        WHERE json_typeof(o.item) = 'object'
    )
    SELECT coalesce(
        (SELECT string_agg(p.part->>'text', '' ORDER BY items.i, p.j)
         FROM items,
              json_array_elements(CASE WHEN json_typeof(items.item->'content') = 'array'
                                       THEN items.item->'content' ELSE '[]'::json END)
              WITH ORDINALITY AS p(part, j)
         WHERE items.item->>'type' = 'message' AND json_typeof(p.part) = 'object'
           AND p.part->>'type' = 'output_text'),
        (SELECT json_agg(json_build_object('name', item->>'name', 'arguments', item->>'arguments')
                         ORDER BY i)::text
         FROM items WHERE item->>'type' = 'function_call'))
$$;
COMMENT ON FUNCTION curation_response_text(json) IS
    'The answer of a recorded Responses reply as text (function calls as JSON); NULL for chat rows.';
"""

DOWNGRADE = r"""
DROP FUNCTION curation_response_text(json);
DROP FUNCTION curation_responses_request(text, jsonb);
DROP FUNCTION curation_responses_items(jsonb);
DROP INDEX openai_chat_completion_response_id_idx;
ALTER TABLE openai_chat_completion
    DROP COLUMN previous_response_id,
    DROP COLUMN response_id,
    DROP COLUMN api;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
