"""Calling a namespace's student where it is served, and giving up on it in time.

The student gets the rewritten call (short prompt, its model name) at its
own endpoint (``base URL + /chat/completions``, or ``/responses`` for a
Responses call), with its own key and never
the client's. Until the client has been sent a byte, any failure of the
student is a fallback, not an error: no connection, a non-2xx answer, no
answer (streams: no first chunk) within the budget, a body cut short. The
proxy then sends the client's original call to the teacher upstream, so a
student that is down costs the client time and nothing else.

Once the first chunk of a stream has gone to the client there is no way
back: a student that stalls after that is cut like any upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curation.proxy import upstream
from curation.proxy.serving import Serving

if TYPE_CHECKING:
    from curation.proxy import relay

log = logging.getLogger("curation.student")


@dataclass(frozen=True)
class Answer:
    """The student answered: a 2xx response, read as far as the client may need it."""

    response: upstream.Response
    head: bytes = b""  # streams: the first chunk, already read off ``response``


@dataclass(frozen=True)
class Fallback:
    """The student failed before the client got a byte; the teacher answers instead."""

    reason: str  # connect, timeout, status_4xx, status_5xx, cut
    detail: str


def chat_url(endpoint: str, path: str = "/chat/completions") -> str:
    """The student's URL for a call to ``path`` (``/chat/completions`` or ``/responses``)."""
    return endpoint.rstrip("/") + path


def request_headers(client: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    """What the student is sent: the body's type, what the client accepts, the student's key."""
    headers = {
        "Content-Type": "application/json",
        "Accept": client.get("Accept", "application/json"),
        "Accept-Encoding": client.get("Accept-Encoding", "identity"),
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


async def ask(
    pools: upstream.Pools,
    served: Serving,
    body: bytes,
    client_headers: Mapping[str, str],
    budget: float,
    path: str = "/chat/completions",
) -> Answer | Fallback:
    """Send the rewritten ``body`` to the student's ``path``; an Answer, or why to fall back."""
    assert served.endpoint is not None
    url = chat_url(served.endpoint, path)
    response: upstream.Response | None = None
    try:
        async with asyncio.timeout(budget):
            pool = pools.get(served.endpoint)
            response = await pool.request(
                "POST", path, request_headers(client_headers, served.api_key), body
            )
            return await _first_bytes(response)
    except TimeoutError:
        outcome = Fallback("timeout", f"no answer from {url} within {budget:g}s")
    except (upstream.UpstreamError, ValueError) as exc:
        reason = "connect" if response is None else "cut"
        outcome = Fallback(reason, f"{url}: {type(exc).__name__}: {exc}")
    except asyncio.CancelledError:  # the client went away while the student thought
        if response is not None:
            response.close()
        raise
    if response is not None:
        response.close()
    return outcome


async def _first_bytes(response: upstream.Response) -> Answer | Fallback:
    if not 200 <= response.status < 300:
        detail = (await response.read())[:300].decode("utf-8", "replace")
        response.release()
        return Fallback(f"status_{response.status // 100}xx", f"{response.status}: {detail}")
    if response.content_type == "text/event-stream":
        head = await response.readany()
        if not head:
            response.close()
            return Fallback("cut", "the stream ended before its first chunk")
        return Answer(response, head)
    await response.read()  # kept by the response: reading it again returns it
    return Answer(response)


async def chunks(head: bytes, response: relay.Answer) -> AsyncIterator[bytes]:
    """A stream's chunks as they arrive, after the ``head`` already read."""
    if head:
        yield head
    async for chunk in response.content.iter_any():
        yield chunk
