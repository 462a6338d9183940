"""Demo data for the web page's screenshots: a believable namespace a few dozen rows deep,
in every state, with a tool call, a flagged row, feedback, a history, a dataset, a job and a served model."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from tests.factories import add_row

Conn = psycopg.Connection[dict[str, Any]]
TABLE = "locations_openai_chat_completion"


CITIES = [
    ("I grew up in Lyon and moved to Berlin last year", '["Lyon","Berlin"]', 41),
    ("Cheapest flights from Pariss to Rome in March?", '["Paris","Rome"]', 23),
    ("What's the weather like today?", "[]", 19),
    ("Hotel near the Sagrada Familia for 2 nights", '["Barcelona"]', 17),
    ("my sister lives in new york, I'm in Toronto", '["New York","Toronto"]', 12),
    ("Train from Munich to Vienna, then Budapest", '["Munich","Vienna","Budapest"]', 11),
    ("Is Lisbon or Porto better in October?", '["Lisbon","Porto"]', 9),
    ("Book a table for 4 tonight", "[]", 8),
    ("Moving from São Paulo to Rio next month", '["São Paulo","Rio de Janeiro"]', 7),
    ("Where is the Eiffel Tower?", '["Paris"]', 6),
    ("I'm stuck at Frankfurt airport, connecting to Singapore", '["Frankfurt","Singapore"]', 5),
    ("Weekend in Amsterdam: museums?", '["Amsterdam"]', 5),
    ("Our office is in Zürich, the client in Geneva", '["Zürich","Geneva"]', 4),
    ("Send the invoice to our Dublin office", '["Dublin"]', 4),
    ("Best ramen in Tokyo near Shinjuku", '["Tokyo"]', 3),
    ("How long is the drive from LA to San Francisco?", '["Los Angeles","San Francisco"]', 3),
    ("Cancel my reservation", "[]", 3),
    ("Visiting Kyoto and Osaka in spring", '["Kyoto","Osaka"]', 2),
    ("Is Mexico City safe for tourists?", '["Mexico City"]', 2),
    ("Ferry from Helsinki to Tallinn times", '["Helsinki","Tallinn"]', 2),
    ("Conference in Austin, hotel in Round Rock", '["Austin","Round Rock"]', 2),
    ("Cape Town or Johannesburg for a first safari trip?", '["Cape Town","Johannesburg"]', 1),
    ("Thanks, that's all!", "[]", 1),
    ("Layover in Doha, final stop Nairobi", '["Doha","Nairobi"]', 1),
    ("Seoul to Busan by KTX", '["Seoul","Busan"]', 1),
    ("Where's Marseille compared to Nice?", '["Marseille","Nice"]', 1),
    ("Copenhagen in December, too cold?", '["Copenhagen"]', 1),
    ("Edinburgh festival dates", '["Edinburgh"]', 1),
    ("Lunch meeting in Milan, dinner in Turin", '["Milan","Turin"]', 1),
    ("Shipping from Rotterdam to Hamburg", '["Rotterdam","Hamburg"]', 1),
]
TAGS = {"app": "travel-assistant", "env": "prod"}
GEOCODE = {
    "type": "function",
    "function": {
        "name": "geocode",
        "description": "Coordinates of a place name",
        "parameters": {
            "type": "object",
            "properties": {"place": {"type": "string"}},
            "required": ["place"],
        },
    },
}


def demo_namespace(conn: Conn) -> dict[str, int]:
    """A believable namespace: a few dozen rows in every state, a tool call, feedback."""
    ids: dict[str, int] = {}
    for n, (prompt, answer, seen) in enumerate(CITIES):
        state = {"included": n % 5 == 1 or n in (3, 6), "excluded": n in (2, 7)}
        ids[prompt] = add_row(
            conn,
            "locations",
            prompt,
            answer,
            included=state["included"],
            excluded=state["excluded"],
            tags=TAGS,
        )
        conn.execute(
            f"UPDATE {TABLE} SET times_seen = %s, first_seen_at = now() - %s * interval '97 minutes',"
            " last_seen_at = now() - %s * interval '11 minutes', model = 'gpt-4o-2024-08-06',"
            " prompt_tokens = 412 + %s, completion_tokens = 9 + %s, latency_ms = 640 + 37 * %s"
            " WHERE id = %s",
            [seen, n + 3, n, n, n % 4, n, ids[prompt]],
        )
    conn.execute(
        f"UPDATE {TABLE} SET corrected_response = %s, included = now(), note = 'typo: Pariss'"
        " WHERE id = %s",
        [json.dumps({"role": "assistant", "content": '["Paris","Rome"]'}), ids[CITIES[1][0]]],
    )
    call = uuid.uuid4()
    conn.execute(
        "INSERT INTO recorded_call VALUES (%s, 'locations', %s, now())", [call, ids[CITIES[0][0]]]
    )
    conn.execute(
        "INSERT INTO feedback (call_id, namespace, row_id, score, label, comment) VALUES"
        " (%s, 'locations', %s, -1, 'missing_city', 'Berlin is where I live now'),"
        " (%s, 'locations', %s, 1, NULL, NULL)",
        [call, ids[CITIES[0][0]], call, ids[CITIES[0][0]]],
    )
    ids["tool"] = add_row(
        conn,
        "locations",
        "How far is the Louvre from Gare du Nord?",
        None,
        included=False,
        tags=TAGS,
        tools=[GEOCODE],
        tool_calls=[
            {
                "id": "call_7QmZ",
                "type": "function",
                "function": {"name": "geocode", "arguments": '{"place": "Louvre, Paris"}'},
            }
        ],
    )
    conn.execute(
        f"UPDATE {TABLE} SET model = 'gpt-4o-2024-08-06', prompt_tokens = 468,"
        " completion_tokens = 21, times_seen = 3, first_seen_at = now() - interval '6 hours',"
        " last_seen_at = now() - interval '38 minutes' WHERE id = %s",
        [ids["tool"]],
    )
    ids["flagged"] = add_row(  # cut off by max_tokens: flagged, kept out until included
        conn,
        "locations",
        "Road trip: Bordeaux, Toulouse, Montpellier, then along the coast to Genoa",
        '["Bordeaux","Toulouse","Montpel',
        included=False,
        tags=TAGS,
    )
    conn.execute(
        f"UPDATE {TABLE} SET flags = '{{truncated}}', model = 'gpt-4o-2024-08-06',"
        " response = jsonb_set(response::jsonb, '{choices,0,finish_reason}', '\"length\"')::json,"
        " prompt_tokens = 431, completion_tokens = 12, times_seen = 2,"
        " first_seen_at = now() - interval '5 hours', last_seen_at = now() - interval '17 minutes'"
        " WHERE id = %s",
        [ids["flagged"]],
    )
    first = ids[CITIES[0][0]]  # a history: ana included it, bob put it back for review
    with conn.transaction():
        conn.execute("SELECT set_config('curation.curator', 'ana', true)")
        conn.execute(
            f"UPDATE {TABLE} SET included = now() - interval '2 hours' WHERE id = %s", [first]
        )
    with conn.transaction():
        conn.execute("SELECT set_config('curation.curator', 'bob', true)")
        conn.execute(
            f"UPDATE {TABLE} SET included = NULL, note = 'Berlin is missing? check' WHERE id = %s",
            [first],
        )
    dataset = conn.execute(
        "INSERT INTO dataset (namespace, format, base_model, sha256, train_sha256, train_examples,"
        " validation_examples, train_tokens, validation_tokens, manifest, created_at) VALUES"
        " ('locations', 'chat', 'gpt-4o-mini-2024-07-18', md5('a'), md5('b'), 412, 46, 187004,"
        " 20871, '{}', now() - interval '3 days') RETURNING id"
    ).fetchone()
    assert dataset is not None
    conn.execute(
        "INSERT INTO fine_tune_job (namespace, dataset_id, provider_job_id, base_model, status,"
        " fine_tuned_model, trained_tokens, created_at, finished_at) VALUES ('locations', %s,"
        " 'ftjob-4kQm2', 'gpt-4o-mini-2024-07-18', 'succeeded',"
        " 'ft:gpt-4o-mini-2024-07-18:acme:locations:9xk2', 561012, now() - interval '3 days',"
        " now() - interval '71 hours')",
        [dataset["id"]],
    )
    conn.execute(
        "UPDATE namespace SET training_system_prompt = 'List the cities the user mentions, as a"
        " JSON array of names.', serve_model = 'ft:gpt-4o-mini-2024-07-18:acme:locations:9xk2',"
        " serve_percent = 20 WHERE name = 'locations'"
    )
    for prompt in ("Where is my refund?", "The app logs me out every hour", "Change my plan"):
        add_row(conn, "support", prompt, "I'm sorry about that! Let me check.", included=False)
    return ids
