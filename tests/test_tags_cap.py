"""Tags are bounded: per capture (keys, key and value length) and per row over repeats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import psycopg

from curation.capture import tags
from tests.factories import captured, write_batches
from tests.harness import ProxyProcess, wait_for
from tests.test_proxy import ask, client, rows

Conn = psycopg.Connection[Any]
TABLE = "locations_openai_chat_completion"


def test_one_capture_contributes_at_most_the_caps() -> None:
    metadata = {f"m{i}": "v" * 1000 for i in range(500)}
    header = ",".join(f"h{i}={'w' * 1000}" for i in range(10)) + ",k" + "x" * 500
    got = tags.from_request({"metadata": metadata, "user": "u" * 1000}, header)
    assert len(got) == tags.MAX_TAGS
    assert all(len(k) <= tags.MAX_KEY_LEN and len(v) <= tags.MAX_VALUE_LEN for k, v in got.items())
    # the operator's header and the request's user come first, then metadata in its order
    assert list(got)[:12] == [*(f"h{i}" for i in range(10)), "k" + "x" * 63, "user"]
    assert list(got)[12:] == [f"m{i}" for i in range(tags.MAX_TAGS - 12)]


def test_header_alone_is_capped() -> None:
    got = tags.parse_header(",".join(f"k{i}=v" for i in range(900)))
    assert list(got) == [f"k{i}" for i in range(tags.MAX_TAGS)]


def test_header_wins_over_user_over_metadata() -> None:
    got = tags.from_request({"metadata": {"user": "m", "a": "1", "": "x"}, "user": "u"}, "a=h")
    assert got == {"a": "h", "user": "u"}


def test_metadata_of_any_shape_is_stringified_and_capped() -> None:
    got = tags.from_request({"metadata": {"n": 1, "deep": {"x": ["y"] * 500}}}, None)
    assert got["n"] == "1" and len(got["deep"]) == tags.MAX_VALUE_LEN


def stored(conn: Conn, prompt: str) -> dict[str, Any]:
    found = conn.execute(
        f"SELECT tags, times_seen FROM {TABLE} WHERE user_prompt = %s", [prompt]
    ).fetchone()
    assert found is not None
    return dict(found)


def test_900_keys_over_repeats_keep_the_first_up_to_the_cap(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    # one repeat at a time: 900 captures, each bringing one new key
    asyncio.run(
        write_batches(db_url, [[captured("Paris", {f"k{i:03}": str(i)})] for i in range(900)])
    )
    got = stored(conn, "Paris")
    assert got["times_seen"] == 900
    assert got["tags"] == {f"k{i:03}": str(i) for i in range(tags.MAX_TAGS)}


def test_a_batch_of_repeats_keeps_the_earliest_keys(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    # keys named so that their order by name is the reverse of their arrival
    batch = [captured("Lyon", {f"k{899 - i:03}": "v"}) for i in range(900)]
    asyncio.run(write_batches(db_url, [batch]))
    got = stored(conn, "Lyon")
    assert got["times_seen"] == 900
    assert set(got["tags"]) == {f"k{899 - i:03}" for i in range(tags.MAX_TAGS)}


def test_a_full_row_updates_its_values_and_never_drops_a_key(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    first = {f"a{i}": "old" for i in range(tags.MAX_TAGS - 2)}
    asyncio.run(write_batches(db_url, [[captured("Nice", first)]]))
    # a curator's own tags may take the row past the cap; a repeat keeps them all
    conn.execute(
        f"UPDATE {TABLE} SET tags = tags || %s WHERE user_prompt = 'Nice'",
        [json.dumps({f"c{i}": "cur" for i in range(5)})],
    )
    asyncio.run(write_batches(db_url, [[captured("Nice", {"a0": "new", "b0": "v", "b1": "v"})]]))
    got = stored(conn, "Nice")["tags"]
    assert len(got) == tags.MAX_TAGS + 3 and got["a0"] == "new"
    assert "b0" not in got and "b1" not in got
    assert all(got[f"c{i}"] == "cur" for i in range(5))


def test_new_keys_fill_the_room_left(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT curation_create_namespace('locations')")
    asyncio.run(
        write_batches(
            db_url, [[captured("Metz", {f"a{i}": "v" for i in range(tags.MAX_TAGS - 3)})]]
        )
    )
    later = [
        captured("Metz", {"z9": "v"}),
        captured("metz", {"z1": "v", "z0": "v"}),
        captured("METZ", {"y": "v"}),
    ]
    asyncio.run(write_batches(db_url, [later]))
    got = stored(conn, "Metz")
    assert len(got["tags"]) == tags.MAX_TAGS and got["times_seen"] == 4
    assert {"z9", "z1", "z0"} <= set(got["tags"]) and "y" not in got["tags"]


def test_900_tags_through_the_proxy_end_at_the_cap(
    start_proxy: Callable[..., ProxyProcess], db_url: str
) -> None:
    """The issue's repro: 15 repeats of one prompt, 60 new header tags each."""
    c = client(start_proxy())
    for call in range(15):
        header = ",".join(f"k{call * 60 + i:03}=v" for i in range(60))
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=ask("Paris"),
            metadata={"user_tag": "x" * 1000},
            extra_headers={"X-Curation-Tags": header},
        )
    row = wait_for(lambda: (r := rows(db_url)[0])["times_seen"] == 15 and r)
    # the first call's 60 header keys and its metadata, then the next call's earliest keys
    assert row["tags"] == {
        **{f"k{i:03}": "v" for i in range(tags.MAX_TAGS - 1)},
        "user_tag": "x" * tags.MAX_VALUE_LEN,
    }
