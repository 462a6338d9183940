"""The real proxy against upstreams that misbehave below the JSON: a plain answer cut
or stalled mid-body, deflate and unknown content encodings, and a disk that refuses
the spool. Each over real sockets, with the rows checked in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import resource
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from openai import OpenAI

from tests.background import BackgroundApp
from tests.harness import ProxyProcess, query, wait_for
from tests.test_durability import metrics

Start = Callable[..., ProxyProcess]
NS = "faults"


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-faults",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"ok: {text}"},
                "finish_reason": "stop",
            }
        ],
    }


async def scripted(request: web.Request) -> web.StreamResponse:
    """An upstream that answers as its X-Script header says."""
    body = await request.json()
    answer = orjson.dumps(completion(body["messages"][-1]["content"]))
    script = request.headers.get("X-Script", "")
    if script in ("cut", "stall"):
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(answer)
        await response.prepare(request)
        await response.write(answer[:20])
        assert request.transport is not None
        if script == "cut":
            request.transport.close()  # the rest never comes
            return response
        for _ in range(200):  # silent until the proxy gives up on it
            await asyncio.sleep(0.05)
            if request.transport is None or request.transport.is_closing():
                break
        return response
    if script == "deflate":
        return web.Response(
            body=zlib.compress(answer),
            headers={"Content-Type": "application/json", "Content-Encoding": "deflate"},
        )
    if script == "snappy":
        return web.Response(
            body=answer,
            headers={"Content-Type": "application/json", "Content-Encoding": "x-snappy"},
        )
    return web.Response(body=answer, headers={"Content-Type": "application/json"})


@pytest.fixture
def upstream() -> Iterator[str]:
    def app() -> web.Application:
        a = web.Application()
        a.router.add_post("/v1/chat/completions", scripted)
        return a

    server = BackgroundApp(app)
    yield server.start()
    server.stop()


def post(proxy: ProxyProcess, text: str, script: str = "") -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/ns/{NS}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": "Bearer sk-faults", "X-Script": script},
        timeout=20,
    )


def recorded(db_url: str) -> dict[str, dict[str, Any]]:
    try:
        found = query(db_url, f"SELECT user_prompt, response FROM {NS}_openai_chat_completion")
    except Exception:
        return {}
    return {r["user_prompt"]: r["response"] for r in found}


def metric(proxy: ProxyProcess, line_start: str) -> float:
    found = [line for line in metrics(proxy).splitlines() if line.startswith(line_start + " ")]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_plain_answer_cut_mid_body_is_502_and_not_recorded(
    start_proxy: Start, db_url: str, upstream: str
) -> None:
    proxy = start_proxy(upstream=upstream)
    cut = post(proxy, "cut short", "cut")
    assert cut.status_code == 502
    error = cut.json()["error"]
    assert error["code"] == "upstream_unreachable" and "broke off" in error["message"]
    assert metric(proxy, 'curation_upstream_errors_total{reason="cut"}') == 1
    assert post(proxy, "whole").status_code == 200
    wait_for(lambda: "whole" in recorded(db_url))
    assert set(recorded(db_url)) == {"whole"}  # the cut answer never reached the spool
    assert metric(proxy, "curation_spooled_total") == 1


def test_a_plain_answer_stalled_mid_body_is_504_and_not_recorded(
    start_proxy: Start, db_url: str, upstream: str
) -> None:
    proxy = start_proxy(upstream=upstream, CURATION_UPSTREAM_READ_TIMEOUT="0.5")
    stalled = post(proxy, "stalled", "stall")
    assert stalled.status_code == 504
    error = stalled.json()["error"]
    assert error["code"] == "upstream_timeout" and "did not finish" in error["message"]
    assert metric(proxy, 'curation_upstream_errors_total{reason="timeout"}') == 1
    assert post(proxy, "whole").status_code == 200
    wait_for(lambda: "whole" in recorded(db_url))
    assert set(recorded(db_url)) == {"whole"}


def test_a_deflate_answer_passes_through_and_is_recorded_decoded(
    start_proxy: Start, db_url: str, upstream: str
) -> None:
    proxy = start_proxy(upstream=upstream)
    with httpx.stream(
        "POST",
        f"{proxy.url}/ns/{NS}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Lyon"}]},
        headers={"Authorization": "Bearer sk-faults", "X-Script": "deflate"},
        timeout=20,
    ) as answer:
        raw = b"".join(answer.iter_raw())
    assert answer.status_code == 200 and answer.headers["content-encoding"] == "deflate"
    assert json.loads(zlib.decompress(raw)) == completion("Lyon")  # the bytes as sent
    got = wait_for(lambda: recorded(db_url).get("Lyon"))
    assert got == completion("Lyon")


def test_an_unknown_encoding_is_answered_and_set_aside(
    start_proxy: Start, db_url: str, upstream: str
) -> None:
    proxy = start_proxy(upstream=upstream)
    odd = post(proxy, "snappy", "snappy")
    assert odd.status_code == 200 and odd.json() == completion("snappy")  # the client's is whole
    assert post(proxy, "after").status_code == 200
    wait_for(lambda: "after" in recorded(db_url))
    assert set(recorded(db_url)) == {"after"}
    [kept] = (proxy.spool_dir / "rejected.jsonl").read_text().splitlines()
    entry = json.loads(kept)
    assert entry["reason"] == "unrecordable: unsupported content-encoding 'x-snappy'"
    assert entry["meta"]["enc"] == "x-snappy" and "snappy" in entry["request"]
    wait_for(lambda: metric(proxy, "curation_unrecordable_total") == 1)


def test_a_disk_that_refuses_the_spool_costs_the_capture_not_the_answer(
    start_proxy: Start, db_url: str
) -> None:
    """The proxy's files may not grow past 64 KiB (RLIMIT_FSIZE, as a full disk: the
    write fails with EFBIG; Python ignores SIGXFSZ): a large capture is dropped and
    counted, its client still gets the answer, and the spool goes on after it."""
    proxy = start_proxy()
    client = OpenAI(base_url=f"{proxy.url}/ns/{NS}/v1", api_key="sk-disk", max_retries=0)

    def ask(text: str) -> str | None:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )
        return reply.choices[0].message.content

    assert ask("small before") == "Answer to: small before"
    wait_for(lambda: "small before" in recorded(db_url))
    assert proxy.proc is not None
    soft, hard = resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        large = "x" * (100 << 10)  # its frame is over 200 KiB
        assert ask(large) == f"Answer to: {large}"
        assert metric(proxy, 'curation_dropped_total{reason="disk"}') == 1
        assert ask("small after") == "Answer to: small after"
    finally:  # the disk has room again (and the proxy can write what it writes at exit)
        resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
    wait_for(lambda: "small after" in recorded(db_url))
    assert set(recorded(db_url)) == {"small before", "small after"}
    assert "could not spool a capture of namespace faults" in proxy.log()
    assert metric(proxy, "curation_spooled_total") == 2
