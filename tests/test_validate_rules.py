"""Every rule of export/validate.py: an example that breaks it, and one that nearly does.

The table is checked against validate.py's own source: a rule added there without
a row here fails ``test_every_rule_has_a_row``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from curation.export import validate

USER = {"role": "user", "content": "I grew up in Lyon"}
ANSWER = {"role": "assistant", "content": '["Lyon"]'}
CALL = {"id": "call_1", "type": "function", "function": {"name": "find", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "find", "parameters": {"type": "object"}}}


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def pair(preferred: Any = None, non_preferred: Any = None, **input_: Any) -> dict[str, Any]:
    return {
        "input": input_ or {"messages": [USER]},
        "preferred_output": [ANSWER] if preferred is None else preferred,
        "non_preferred_output": [{"role": "assistant", "content": "[]"}]
        if non_preferred is None
        else non_preferred,
    }


@dataclass(frozen=True)
class Rule:
    code: str
    check: Callable[[Any], None]
    breaks: Any
    nearly: Any  # the smallest change that makes it valid


CHAT, PREF = validate.check_chat, validate.check_preference
RULES = [
    # check_chat: the example itself
    Rule("data_type", CHAT, [chat(USER, ANSWER)], chat(USER, ANSWER)),
    Rule("missing_messages_list", CHAT, chat(), chat(ANSWER)),
    Rule("missing_messages_list", CHAT, {"messages": "I grew up in Lyon"}, chat(ANSWER)),
    # each message
    Rule("data_type", CHAT, chat("I grew up in Lyon", ANSWER), chat(USER, ANSWER)),
    Rule("message_missing_key", CHAT, chat({"content": "hi"}, ANSWER), chat(USER, ANSWER)),
    # total: odd JSON types are refused with a code, never a TypeError
    Rule(
        "unrecognized_role",
        CHAT,
        chat({"role": ["user"], "content": "hi"}, ANSWER),
        chat(USER, ANSWER),
    ),
    Rule(
        "invalid_tool_call",
        CHAT,
        chat(USER, {"role": "assistant", "content": None, "tool_calls": 5}),
        chat(USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}),
    ),
    Rule(
        "message_missing_key",
        CHAT,
        chat(USER, {"role": "assistant"}),
        chat(USER, {"role": "assistant", "tool_calls": [CALL]}),
    ),
    Rule(
        "message_unrecognized_key",
        CHAT,
        chat({**USER, "tokens": 5}, ANSWER),
        chat({**USER, "name": "ana"}, ANSWER),
    ),
    Rule(
        "unrecognized_role",
        CHAT,
        chat({"role": "bot", "content": "x"}, ANSWER),
        chat({"role": "developer", "content": "x"}, USER, ANSWER),
    ),
    Rule(
        "missing_content",
        CHAT,
        chat({"role": "user", "content": ""}, ANSWER),
        chat({"role": "user", "content": " "}, ANSWER),
    ),
    Rule(
        "missing_content",
        CHAT,
        chat(USER, {"role": "assistant", "content": None}),
        chat(USER, {"role": "assistant", "content": None, "function_call": CALL["function"]}),
    ),
    Rule(
        "missing_content",
        CHAT,
        chat({"role": "user", "content": []}, ANSWER),
        chat({"role": "user", "content": [{"type": "text", "text": "hi"}]}, ANSWER),
    ),
    Rule(
        "missing_content",
        CHAT,
        chat({"role": "user", "content": 5}, ANSWER),
        chat({"role": "user", "content": "5"}, ANSWER),
    ),
    Rule(
        "invalid_weight",
        CHAT,
        chat(USER, {**ANSWER, "weight": 2}),
        chat(USER, {**ANSWER, "weight": 0}),
    ),
    Rule(
        "invalid_weight",
        CHAT,
        chat({**USER, "weight": 1}, ANSWER),
        chat(USER, {**ANSWER, "weight": 1}),
    ),
    Rule(
        "invalid_tool_call",
        CHAT,
        chat(USER, {"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}),
        chat(USER, {"role": "assistant", "tool_calls": [CALL]}),
    ),
    Rule(
        "invalid_tool_call",
        CHAT,
        chat(
            USER,
            {
                "role": "assistant",
                "tool_calls": [{**CALL, "function": {"name": "find", "arguments": {}}}],
            },
        ),
        chat(USER, {"role": "assistant", "tool_calls": [CALL]}),
    ),
    Rule(
        "message_missing_key",
        CHAT,
        chat(
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "content": "3"},
            ANSWER,
        ),
        chat(
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "content": "3", "tool_call_id": "call_1"},
            ANSWER,
        ),
    ),
    # the conversation as a whole
    Rule(
        "example_missing_assistant_message",
        CHAT,
        chat({"role": "system", "content": "s"}, USER),
        chat({"role": "system", "content": "s"}, ANSWER),
    ),
    Rule(
        "last_message_not_assistant",
        CHAT,
        chat(USER, ANSWER, USER),
        chat(USER, ANSWER, USER, ANSWER),
    ),
    Rule(
        "invalid_tools",
        CHAT,
        chat(USER, ANSWER, tools=[{"type": "function", "function": {"name": ""}}]),
        chat(USER, ANSWER, tools=[TOOL]),
    ),
    Rule("invalid_tools", CHAT, chat(USER, ANSWER, tools=TOOL), chat(USER, ANSWER, tools=[TOOL])),
    # check_preference
    Rule("data_type", PREF, {"input": [USER]}, pair()),
    Rule("data_type", PREF, [pair()], pair()),
    Rule("missing_messages_list", PREF, pair(messages=[]), pair(messages=[USER])),
    Rule("data_type", PREF, pair(messages=[USER, "x"]), pair(messages=[USER, USER])),
    Rule(
        "example_missing_assistant_message",
        PREF,
        pair(preferred=[ANSWER, ANSWER]),
        pair(preferred=[ANSWER]),
    ),
    Rule(
        "example_missing_assistant_message",
        PREF,
        pair(non_preferred=[{"role": "user", "content": "[]"}]),
        pair(non_preferred=[{"role": "assistant", "content": "[]"}]),
    ),
    Rule(
        "missing_content",
        PREF,
        pair(preferred=[{"role": "assistant", "content": ""}]),
        pair(preferred=[{"role": "assistant", "content": "[]"}]),
    ),
]


def ids(rule: Rule) -> str:
    return f"{rule.check.__name__}-{rule.code}"


@pytest.mark.parametrize("rule", RULES, ids=ids)
def test_a_broken_example_is_refused_with_its_code(rule: Rule) -> None:
    with pytest.raises(validate.Invalid) as info:
        rule.check(copy.deepcopy(rule.breaks))
    assert info.value.code == rule.code
    assert str(info.value).startswith(f"{rule.code}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("rule", RULES, ids=ids)
def test_a_nearly_broken_example_passes(rule: Rule) -> None:
    rule.check(copy.deepcopy(rule.nearly))


@pytest.mark.parametrize(
    ("tokens", "limit", "refused"),
    [(4097, 4096, True), (4096, 4096, False), (10**9, None, False), (0, 0, False)],
)
def test_too_long(tokens: int, limit: int | None, refused: bool) -> None:
    if not refused:
        validate.check_length(tokens, limit, "gpt-4o-mini")
        return
    with pytest.raises(validate.Invalid) as info:
        validate.check_length(tokens, limit, "gpt-4o-mini")
    assert info.value.code == "too_long" and "4097 tokens" in str(info.value)


def test_every_rule_has_a_row() -> None:
    """Each code validate.py can raise is broken by some row of the table above."""
    source = Path(validate.__file__).read_text()
    raised = set(re.findall(r'Invalid\(\s*"(\w+)"', source))
    assert raised == {r.code for r in RULES} | {"too_long"}
