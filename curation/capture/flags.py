"""Automatic flags: what is wrong with a recorded answer, seen from the call alone. Pure.

``flags(request, response)`` names the reasons a row should not train a model
as it is, in the order of ``REASONS``. It reads chat completions and Responses
API replies alike and is total over any JSON (production traffic): a value of
the wrong type is no evidence, so it never raises a flag, nor an exception.

Precision comes first: a flag keeps a row out of the export until a curator
accepts it, so each reason fires only on plain evidence (see the README's
"Automatic flags" for what each means).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

from curation.capture.shape import arr, obj, text

TRUNCATED = "truncated"
CONTENT_FILTER = "content_filter"
EMPTY = "empty"
REFUSAL = "refusal"
INVALID_JSON = "invalid_json"
TOOL_ARGS = "tool_args"
MODEL_MISMATCH = "model_mismatch"
# Not a finding: the check itself failed on this row (a bug); the backfill stores it so
# the row is held out of the export, like a flagged one, until a curator accepts it.
CHECK_FAILED = "check_failed"
REASONS = (
    TRUNCATED, CONTENT_FILTER, EMPTY, REFUSAL, INVALID_JSON, TOOL_ARGS, MODEL_MISMATCH,
    CHECK_FAILED,
)  # fmt: skip

REFUSAL_MAX_CHARS = 300  # longer answers that start so usually go on to help
# An answer that starts with one of these (after an optional apology) and is short:
# "I'm sorry, but I can't help with that." Not "I'm sorry, but I can't find a city
# in this text", which is an answer.
REFUSAL_OPENINGS = (
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm unable to help with",
    "i'm unable to assist with",
    "i am unable to help with",
    "i am unable to assist with",
    "i'm not able to help with",
    "i can't comply with",
    "i cannot comply with",
    "i can't help you with that",
    "i can't provide help with that",
    "i won't be able to help with",
)
_APOLOGY = re.compile(r"^(?:(?:i'm|i am) sorry|sorry|apologies)\s*[,.!]?\s*(?:but\s+)?")
# gpt-4o-2024-08-06, gpt-4-0613, claude-3-5-sonnet-20241022
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_ALIASES = ("-latest", "-preview")  # names that move to the newest snapshot
_MAX_SCHEMA_CHECKS = 64  # tool calls checked against schemas per answer
MAX_VALIDATED_CHARS = 64 * 1024  # a longer answer or arguments: parsed, not schema-checked
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")  # name -> schema
_DATA_KEYWORDS = ("enum", "const", "default", "examples")  # values, not schemas


def flags(request: Any, response: Any) -> list[str]:
    """The reasons in ``REASONS`` order; empty for a row that looks fine."""
    req, res = obj(request), obj(response)
    answer = _responses_answer(res) if _is_response(res) else _chat_answer(res)
    found = set(answer.stopped)
    if answer.refusal:
        found.add(REFUSAL)
    elif not answer.text.strip() and not answer.calls and not answer.other:
        found.add(EMPTY)
    elif _looks_like_refusal(answer.text) and not answer.calls:
        found.add(REFUSAL)
    if answer.text.strip() and _invalid_json(_json_format(req), answer.text):
        found.add(INVALID_JSON)
    if answer.calls and _bad_tool_call(req, answer.calls):
        found.add(TOOL_ARGS)
    if _model_mismatch(text(req.get("model")), text(res.get("model"))):
        found.add(MODEL_MISMATCH)
    return [r for r in REASONS if r in found]


def for_row(request: Any, response: Any, *, rewritten: bool) -> list[str]:
    """A recorded row's flags: a rewritten call was answered by the served student, a
    different model by design, so that is no mismatch."""
    found = flags(request, response)
    return [f for f in found if not (rewritten and f == MODEL_MISMATCH)]


class _Answer:
    """The parts of an answer the checks read, whichever API carried it."""

    def __init__(self) -> None:
        self.text = ""
        self.refusal = False
        self.calls: list[tuple[str | None, Any]] = []  # (function name, arguments)
        self.stopped: set[str] = set()  # truncated / content_filter
        self.other = False  # an answer of another kind (a custom tool call, an image...)


def _chat_answer(response: dict[str, Any]) -> _Answer:
    """The first choice: the one a client reads and export trains on."""
    out = _Answer()
    choice = obj(next(iter(arr(response.get("choices"))), None))
    finish = choice.get("finish_reason")
    if finish == "length":
        out.stopped.add(TRUNCATED)
    elif finish == "content_filter":
        out.stopped.add(CONTENT_FILTER)
    message = obj(choice.get("message"))
    out.text = _content_text(message.get("content"))
    if not out.text:  # an audio answer: its transcript is its text
        out.text = text(obj(message.get("audio")).get("transcript")) or ""
    out.refusal = bool(text(message.get("refusal")))
    for call in arr(message.get("tool_calls")):
        if obj(call).get("type", "function") != "function":
            out.other = True  # a custom tool's call ({"type": "custom"}): free text, no schema
            continue
        function = obj(obj(call).get("function"))
        out.calls.append((text(function.get("name")), function.get("arguments")))
    legacy = obj(message.get("function_call"))
    if legacy:
        out.calls.append((text(legacy.get("name")), legacy.get("arguments")))
    return out


def _responses_answer(response: dict[str, Any]) -> _Answer:
    out = _Answer()
    if response.get("status") == "incomplete":
        reason = obj(response.get("incomplete_details")).get("reason")
        out.stopped.add(CONTENT_FILTER if reason == "content_filter" else TRUNCATED)
    texts = []
    for item in arr(response.get("output")):
        it = obj(item)
        if it.get("type") == "function_call":
            out.calls.append((text(it.get("name")), it.get("arguments")))
        elif it.get("type") not in ("message", "reasoning", None):
            out.other = True  # computer_call, custom_tool_call, image_generation_call...
        for part in arr(it.get("content")) if it.get("type") == "message" else []:
            p = obj(part)
            if p.get("type") == "output_text":
                texts.append(text(p.get("text")) or "")
            elif p.get("type") == "refusal" and text(p.get("refusal")):
                out.refusal = True
    out.text = "".join(texts)
    return out


def _is_response(response: dict[str, Any]) -> bool:
    return response.get("object") == "response" or (
        "output" in response and "choices" not in response
    )


def _content_text(content: Any) -> str:
    """A message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(text(obj(p).get("text")) or "" for p in arr(content))


def _looks_like_refusal(answer: str) -> bool:
    said = " ".join(answer.replace("\u2019", "'").split()).lower()
    if not said or len(said) > REFUSAL_MAX_CHARS:
        return False
    said = _APOLOGY.sub("", said, count=1)
    return said.startswith(REFUSAL_OPENINGS)


# -- JSON answers -----------------------------------------------------------


def _json_format(request: dict[str, Any]) -> tuple[str, Any] | None:
    """("json_object", None) or ("json_schema", schema) when the request asked for JSON."""
    if "response_format" not in request and "text" not in request:
        return None  # most requests: no format asked for
    chat = obj(request.get("response_format"))
    responses = obj(obj(request.get("text")).get("format"))  # Responses API
    for fmt, schema in ((chat, obj(chat.get("json_schema")).get("schema")), (responses, None)):
        kind = fmt.get("type")
        if kind == "json_object":
            return kind, None
        if kind == "json_schema":
            return kind, schema if fmt is chat else fmt.get("schema")
    return None


def _invalid_json(asked: tuple[str, Any] | None, answer: str) -> bool:
    if asked is None:
        return False
    try:
        value = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return True
    kind, schema = asked
    return kind == "json_schema" and len(answer) <= MAX_VALIDATED_CHARS and _violates(schema, value)


def _violates(schema: Any, value: Any) -> bool:
    """True only when ``schema`` is a usable JSON Schema and ``value`` fails it."""
    if not isinstance(schema, dict):
        return False
    try:
        validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
        return validator is not None and not validator.is_valid(value)
    except Exception:  # a schema it cannot apply (a $ref it cannot resolve) is no evidence
        return False


@functools.lru_cache(maxsize=256)  # a service sends the same few schemas again and again
def _validator(schema_json: bytes) -> Any:
    """The schema's validator, or None for a schema that is not valid JSON Schema."""
    import jsonschema  # loads in ~50 ms: only once a request asked for a schema

    schema = _without_patterns(orjson.loads(schema_json))
    try:
        cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        return cls(schema)
    except Exception:
        return None


def _without_patterns(schema: Any) -> Any:
    """The schema less its regexes: ``pattern`` and ``patternProperties`` run on Python's
    backtracking ``re`` in the recorder, and a client's ``^(a+)+$`` would hang it.
    ``additionalProperties`` beside ``patternProperties`` goes too (it depends on them);
    ``format`` asserts nothing without a format checker, and none is given."""
    if isinstance(schema, list):
        return [_without_patterns(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    has_pattern_properties = isinstance(schema.get("patternProperties"), dict)
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            continue
        if has_pattern_properties and key in (
            "patternProperties", "additionalProperties", "unevaluatedProperties"
        ):  # fmt: skip
            continue
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _without_patterns(v) for name, v in value.items()}
        else:
            out[key] = _without_patterns(value)
    return out


# -- tool calls -------------------------------------------------------------


def _declared(request: dict[str, Any]) -> dict[str, Any]:
    """Function name -> its parameters schema (None: none declared), chat or Responses."""
    declared: dict[str, Any] = {}
    for tool in arr(request.get("tools")):
        t = obj(tool)
        function = obj(t.get("function")) or t  # chat nests it; Responses does not
        name = text(function.get("name"))
        if name is not None and t.get("type", "function") == "function":
            declared[name] = function.get("parameters")
    for function in arr(request.get("functions")):  # the legacy function-calling form
        name = text(obj(function).get("name"))
        if name is not None:
            declared[name] = obj(function).get("parameters")
    return declared


def _bad_tool_call(request: dict[str, Any], calls: list[tuple[str | None, Any]]) -> bool:
    declared = _declared(request)
    has_other_tools = any(
        obj(t).get("type", "function") != "function" for t in arr(request.get("tools"))
    )
    for i, (name, arguments) in enumerate(calls):
        if name is None or name not in declared:
            if has_other_tools and name is not None:
                continue  # a built-in tool's call (web search, MCP...) we cannot check
            return True
        schema = declared[name] if i < _MAX_SCHEMA_CHECKS else None  # bounded work
        if _bad_arguments(arguments, schema):
            return True
    return False


def _bad_arguments(arguments: Any, schema: Any) -> bool:
    if not isinstance(arguments, str):
        return True
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return True
    if not isinstance(value, dict):
        return True
    return len(arguments) <= MAX_VALIDATED_CHARS and _violates(schema, value)


# -- the model --------------------------------------------------------------


def _model_mismatch(requested: str | None, answered: str | None) -> bool:
    if requested and answered and len(requested) + len(answered) <= _CACHED_NAMES:
        return _names_mismatch(requested, answered)
    return _names_mismatch.__wrapped__(requested, answered)  # a client's odd name: not kept


_CACHED_NAMES = 256  # characters of the two names, at most, for a cached answer


@functools.lru_cache(maxsize=1024)  # a service asks for the same few models again and again
def _names_mismatch(requested: str | None, answered: str | None) -> bool:
    """True when the upstream named a different model; a dated snapshot of the one asked
    for (gpt-4o-mini -> gpt-4o-mini-2024-07-18) or a provider prefix is the same one, and
    so is what an alias points at (gpt-4-turbo-preview -> gpt-4-0125-preview,
    claude-3-5-sonnet-latest -> claude-3-5-sonnet-20241022)."""
    if not requested or not answered:
        return False
    asked, got = requested.strip().lower(), answered.strip().lower()
    asked, got = asked.rsplit("/", 1)[-1], got.rsplit("/", 1)[-1]
    if asked == got:
        return False
    if got.startswith(asked) and _SNAPSHOT.fullmatch(got[len(asked) :]) is not None:
        return False
    if not asked.endswith(_ALIASES):
        return True
    family, base = _family(asked), _family(got)
    # the alias's snapshot may drop one word of it: gpt-4-turbo-preview -> gpt-4-0125-preview
    return not (base == family or (len(base) == len(family) - 1 and family[: len(base)] == base))


def _family(name: str) -> list[str]:
    """A model name's words less dates, snapshot numbers and alias words."""
    words = re.sub(r"-\d{4}-\d{2}-\d{2}", "", name).split("-")
    return [w for w in words if w not in ("latest", "preview") and not re.fullmatch(r"\d{3,}", w)]
