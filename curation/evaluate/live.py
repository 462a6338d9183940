"""A student and its teacher on the same live call (shadow and watch): the answers. Pure.

The proxy hands over raw bytes from the wire: the answer the client got (a
chat completion or a Responses API Response, or its SSE stream as the
recorder reassembles it) and the background model's answer. Both are read
totally: an assistant message and its token counts, or ``NoAnswer`` saying
why not; a Response's output becomes the chat message export reads from it
(its output text, function calls as ``tool_calls``). They are compared as
``eval`` compares (``calls.answer_text``: the content, else the tool calls by
function name and parsed arguments), with the namespace's comparator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from curation.capture import responses, stream
from curation.capture.rewrite import rewritten
from curation.capture.row import decode_body
from curation.capture.shape import Unrecordable, int32, obj
from curation.evaluate import calls, compare
from curation.evaluate.compare import Comparator

# a background call is one JSON answer: no stream, nothing about the client's transport
TRANSPORT = ("stream", "stream_options")
CHAT_API = responses.CHAT_API


class NoAnswer(ValueError):
    """A body that holds no assistant message to compare (the reason is the message)."""


@dataclass(frozen=True, kw_only=True)
class Answer:
    message: dict[str, Any]
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def answer_of(
    body: bytes, streamed: bool = False, encoding: str | None = None, api: str = CHAT_API
) -> Answer:
    """The assistant message of a chat completion's (first choice) or a Response's bytes,
    with its usage."""
    if api == responses.API:
        return _response_answer(body, streamed, encoding)
    try:
        decoded = decode_body(body, encoding)
        response: Any = stream.reassemble(decoded) if streamed else orjson.loads(decoded)
    except (Unrecordable, orjson.JSONDecodeError) as exc:
        raise NoAnswer(f"the answer is not a chat completion: {exc}") from None
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise NoAnswer("the answer is not a chat completion")
    choices = response["choices"]
    message = obj(choices[0]).get("message") if choices else None
    if not isinstance(message, dict):
        raise NoAnswer("the answer has no assistant message")
    usage = obj(response.get("usage"))
    return _answer(message, response, usage.get("prompt_tokens"), usage.get("completion_tokens"))


def _response_answer(body: bytes, streamed: bool, encoding: str | None) -> Answer:
    """A Responses API answer: its output as one assistant message (as export reads it)."""
    try:
        decoded = decode_body(body, encoding)
        response: Any = responses.reassemble(decoded) if streamed else orjson.loads(decoded)
        response = responses.check_response(response)
        message = responses.answer(response).message
    except (Unrecordable, orjson.JSONDecodeError) as exc:
        raise NoAnswer(f"the answer is not a completed Response: {exc}") from None
    prompt_tokens, completion_tokens = responses.tokens(response)
    return _answer(message, response, prompt_tokens, completion_tokens)


def _answer(
    message: dict[str, Any], response: dict[str, Any], prompt: Any, completion: Any
) -> Answer:
    model = response.get("model")
    return Answer(
        message=message,
        model=model if isinstance(model, str) else None,
        prompt_tokens=int32(prompt),
        completion_tokens=int32(completion),
    )


def background_body(
    body: bytes, model: str | None = None, short_prompt: str | None = None, api: str = CHAT_API
) -> bytes | None:
    """The client's call as a background call: one JSON answer, not a stream; for the
    student (``model`` given) rewritten as it is served. None: not a call of ``api``.
    A Responses call is not stored upstream (``store: false``): it is telemetry, and no
    later call of the client may name it."""
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if model is not None:
        request = rewritten(request, model, short_prompt, api)
    if not isinstance(request, dict):
        return None
    kept = {k: v for k, v in request.items() if k not in TRANSPORT}
    if api == responses.API:
        return (
            None
            if "input" not in request
            else orjson.dumps({**kept, "stream": False, "store": False})
        )
    if not isinstance(request.get("messages"), list):
        return None
    return orjson.dumps({**kept, "stream": False})


def comparable(message: dict[str, Any]) -> str:
    """What is compared of ``message``, as eval compares it; NoAnswer for an odd shape."""
    try:
        return calls.answer_text(message)
    except (KeyError, TypeError, AttributeError) as exc:
        raise NoAnswer(f"the answer's tool calls are malformed: {type(exc).__name__}") from None


def command_input(teacher: Answer, student: Answer) -> bytes:
    """What a command comparator reads on stdin, as ``eval`` writes it: each answer as data
    when it parses as JSON, else as text."""
    return compare.command_payload(
        comparable(teacher.message), comparable(student.message)
    ).encode()


def agree(comparator: Comparator, teacher: Answer, student: Answer) -> bool:
    """Whether the student's answer matches the teacher's (the expected one)."""
    return comparator(comparable(teacher.message), comparable(student.message))
