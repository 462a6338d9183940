"""Conversations render into the dedup key without provider-generated ids (issue 11, item 6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from openai import OpenAI

from curation.capture import prompt
from tests.harness import ProxyProcess, wait_for
from tests.test_proxy import client, rows

Start = Callable[..., ProxyProcess]


def agent_run(call_ids: list[str], cities: list[str], results: list[str]) -> dict[str, Any]:
    """A user question, one assistant turn calling get_weather per city, the results in order."""
    calls = [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        for call_id, city in zip(call_ids, cities, strict=True)
    ]
    return {
        "messages": [
            {"role": "system", "content": "You are a weather agent."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            *(
                {"role": "tool", "tool_call_id": call_id, "content": result}
                for call_id, result in zip(call_ids, results, strict=True)
            ),
        ]
    }


def test_a_tool_round_trip_renders_names_not_ids() -> None:
    p = prompt.extract(agent_run(["call_e7aee1b3593c"], ["Paris"], ["sunny in Paris"]))
    assert p.user_prompt == (
        "user: Weather?\n\n"
        'assistant: \n[tool call get_weather({"city": "Paris"})]\n\n'
        "tool get_weather: sunny in Paris"
    )
    assert "call_" not in p.user_prompt
    assert p.system_prompt == "You are a weather agent."


def test_identical_runs_with_different_ids_share_one_key() -> None:
    a = prompt.extract(agent_run(["call_aaa"], ["Paris"], ["sunny"]))
    b = prompt.extract(agent_run(["call_bbb"], ["Paris"], ["sunny"]))
    assert a == b


def test_different_results_or_arguments_still_differ() -> None:
    base = prompt.extract(agent_run(["call_1"], ["Paris"], ["sunny"]))
    assert prompt.extract(agent_run(["call_1"], ["Paris"], ["rain"])) != base
    assert prompt.extract(agent_run(["call_1"], ["Rome"], ["sunny"])) != base


def test_parallel_calls_of_one_function_keep_their_pairing() -> None:
    """Results answered out of order pair with their calls by position, not by id."""
    in_order = agent_run(["c1", "c2"], ["Paris", "Rome"], ["sunny", "rain"])
    swapped = agent_run(["c1", "c2"], ["Paris", "Rome"], ["sunny", "rain"])
    swapped["messages"][3:] = [
        {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]
    a, b = prompt.extract(in_order).user_prompt, prompt.extract(swapped).user_prompt
    assert a.endswith("tool get_weather#1: sunny\n\ntool get_weather#2: rain")
    assert b.endswith("tool get_weather#2: sunny\n\ntool get_weather#1: rain")
    renamed = agent_run(["x9", "x8"], ["Paris", "Rome"], ["sunny", "rain"])
    assert prompt.extract(renamed).user_prompt == a


def test_unmatched_tool_results_fall_back_to_their_name_or_none() -> None:
    p = prompt.extract(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_orphan", "content": "42"},
                {"role": "tool", "tool_call_id": "call_x", "name": "lookup", "content": "7"},
                {"role": "tool", "tool_call_id": ["not", "a", "string"], "content": "8"},
            ]
        }
    )
    assert p.user_prompt == "user: hi\n\ntool: 42\n\ntool lookup: 7\n\ntool: 8"


def test_a_later_turn_resolves_against_its_own_calls() -> None:
    """Call ids reused across turns (some clients number them) name the latest call."""
    request = {
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c0", "function": {"name": "search", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c0", "content": "found"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c0", "function": {"name": "fetch", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c0", "content": "page"},
        ]
    }
    rendered = prompt.extract(request).user_prompt
    assert "tool search: found" in rendered and "tool fetch: page" in rendered


# -- end to end: the real openai SDK -> `curation proxy` -> the fake upstream -> PostgreSQL


WEATHER_TOOL: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def run_agent(sdk: OpenAI) -> str:
    """One agent run: the model calls get_weather, the tool answers, the model answers.
    The fake upstream gives every tool call a fresh ``call_N`` id, as OpenAI does."""
    messages: list[Any] = [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    first = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=WEATHER_TOOL,
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny in Paris"},
    ]
    sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=WEATHER_TOOL,
        tool_choice="none",
    )
    return call.id


def test_two_identical_agent_runs_dedupe_through_the_proxy(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    sdk = client(proxy, prefix="/ns/agents")
    first_id, second_id = run_agent(sdk), run_agent(sdk)
    assert first_id != second_id  # the provider's ids differ between the runs
    table = "agents_openai_chat_completion"
    found = wait_for(
        lambda: (r := rows(db_url, table, n=2)) and sum(x["times_seen"] for x in r) == 4 and r
    )
    assert [r["times_seen"] for r in found] == [2, 2]  # the opening call and the round trip
    round_trip = next(r for r in found if r["user_prompt"] != "Weather in Paris?")
    assert round_trip["user_prompt"] == (
        "user: Weather in Paris?\n\n"
        'assistant: \n[tool call get_weather({"query": "Weather in Paris?"})]\n\n'
        "tool get_weather: sunny in Paris"
    )
    stored = round_trip["request"]["messages"]  # the ids stay in the request (the first run's)
    assert stored[2]["tool_calls"][0]["id"] == first_id
    assert stored[3]["tool_call_id"] == first_id
