"""The proxy end to end: the real openai SDK -> `curation proxy` -> fake upstream,
rows checked in a real PostgreSQL."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, query, wait_for

KEY = "sk-test-secret-4f9a1c7e2b"
Start = Callable[..., ProxyProcess]


def client(proxy: ProxyProcess, prefix: str = "/ns/locations", **kw: Any) -> OpenAI:
    kw.setdefault("max_retries", 0)
    return OpenAI(base_url=f"{proxy.url}{prefix}/v1", api_key=kw.pop("api_key", KEY), **kw)


def rows(
    db_url: str, table: str = "locations_openai_chat_completion", n: int = 1
) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        try:
            found = query(db_url, f"SELECT * FROM {table} ORDER BY id")
        except Exception:
            return None
        return found if len(found) >= n else None

    return wait_for(enough, timeout=10)  # type: ignore[no-any-return]


def ask(
    text: str, system: str = "You are a long production prompt about locations."
) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_plain_completion_recorded(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy()
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ask("I live in Paris"), temperature=0.2
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "Answer to: I live in Paris"
    for header in (
        "x-request-id",
        "openai-version",
        "openai-processing-ms",
        "x-ratelimit-limit-requests",
    ):
        assert raw.headers.get(header), header
    [row] = rows(db_url)
    assert row["user_prompt"] == "I live in Paris"
    assert row["system_prompt"] == "You are a long production prompt about locations."
    assert row["response"] == json.loads(raw.http_response.content)
    assert (
        row["request"]["temperature"] == 0.2
        and row["request"]["messages"][1]["content"] == "I live in Paris"
    )
    assert (row["model"], row["streamed"], row["times_seen"]) == (
        "gpt-4o-mini-2024-07-18",
        False,
        1,
    )
    assert (
        row["prompt_tokens"] == reply.usage.prompt_tokens
        and row["upstream_request_id"] == raw.headers["x-request-id"]
    )
    assert row["included"] is None and row["latency_ms"] > 0
    # forwarded byte for byte, with the client's own credentials
    sent = fake_openai.seen[-1]
    assert sent.body == raw.http_request.content
    assert sent.headers["Authorization"] == f"Bearer {KEY}"


def test_stream_reassembled_with_usage(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    stream = client(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("Berlin, Rome and Madrid"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    [row] = rows(db_url)
    assert row["streamed"] is True
    assert row["response"]["object"] == "chat.completion"
    assert (
        row["response"]["choices"][0]["message"]["content"]
        == text
        == "Answer to: Berlin, Rome and Madrid"
    )
    assert row["response"]["choices"][0]["finish_reason"] == "stop"
    assert row["response"]["usage"]["total_tokens"] == usage.total_tokens
    assert row["completion_tokens"] == usage.completion_tokens


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_places",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_calls(start_proxy: Start, db_url: str, streamed: bool) -> None:
    proxy = start_proxy()
    c = client(proxy)
    if streamed:
        list(
            c.chat.completions.create(
                model="gpt-4o-mini", messages=ask("Lyon"), tools=TOOLS, stream=True
            )
        )  # type: ignore[arg-type]
    else:
        c.chat.completions.create(model="gpt-4o-mini", messages=ask("Lyon"), tools=TOOLS)  # type: ignore[arg-type]
    [row] = rows(db_url)
    message = row["response"]["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {
        "name": "find_places",
        "arguments": '{"query": "Lyon"}',
    }
    assert message["tool_calls"][0]["id"].startswith("call_")
    assert row["response"]["choices"][0]["finish_reason"] == "tool_calls"
    assert row["request"]["tools"] == TOOLS


def test_json_mode_and_n2_stream_kept_whole(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    c = client(proxy)
    c.chat.completions.create(
        model="gpt-4o-mini", messages=ask("Nice"), response_format={"type": "json_object"}
    )
    list(c.chat.completions.create(model="gpt-4o-mini", messages=ask("Tours"), n=2, stream=True))
    first, second = rows(db_url, n=2)
    assert json.loads(first["response"]["choices"][0]["message"]["content"]) == {
        "answer": "Nice",
        "length": 4,
    }
    assert [ch["index"] for ch in second["response"]["choices"]] == [0, 1]
    assert {ch["message"]["content"] for ch in second["response"]["choices"]} == {
        "Answer to: Tours"
    }


def test_case_only_duplicates_collapse_keeping_first(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    c = client(proxy)
    c.chat.completions.create(model="gpt-4o-mini", messages=ask("Paris"), metadata={"team": "a"})
    [first] = rows(db_url)
    query(db_url, "UPDATE locations_openai_chat_completion SET included = now(), note = 'ok'")
    c.chat.completions.create(
        model="gpt-4o-mini", messages=ask("PARIS"), extra_headers={"X-Curation-Tags": "src=web"}
    )
    row = wait_for(lambda: (r := rows(db_url)[0])["times_seen"] == 2 and r)
    assert len(rows(db_url)) == 1
    assert row["user_prompt"] == "Paris"
    assert row["response"] == first["response"]  # the first answer stays
    assert row["included"] is not None and row["note"] == "ok"  # curation untouched
    assert row["tags"] == {"team": "a", "src": "web"}
    assert row["last_seen_at"] > row["first_seen_at"]


def test_batch_with_repeats_counts_each_call(start_proxy: Start, db_url: str) -> None:
    """Several repeats inside one writer batch are folded, not lost or double-counted."""
    proxy = start_proxy()
    c = client(proxy)
    for text in ["Oslo", "oslo", "OSLO", "Bergen", "oslo"]:
        c.chat.completions.create(model="gpt-4o-mini", messages=ask(text))
    got = wait_for(lambda: (r := rows(db_url, n=2)) and sum(x["times_seen"] for x in r) == 5 and r)
    assert {r["user_prompt"]: r["times_seen"] for r in got} == {"Oslo": 4, "Bergen": 1}


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_errors_pass_through_unrecorded(
    start_proxy: Start, db_url: str, status: int, exc: type[Exception]
) -> None:
    proxy = start_proxy()
    with pytest.raises(exc) as info:
        client(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=ask("x"), extra_headers={"X-Fake-Status": str(status)}
        )
    err = info.value
    assert err.status_code == status  # type: ignore[attr-defined]
    assert err.body["message"] == f"Fake error {status}."  # type: ignore[attr-defined]
    headers = err.response.headers  # type: ignore[attr-defined]
    assert headers["x-request-id"].startswith("req_")
    if status == 429:
        assert headers["retry-after"] == "0" and headers["x-ratelimit-remaining-requests"] == "0"
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("after"))
    assert [r["user_prompt"] for r in rows(db_url)] == ["after"]


def test_sdk_retries_through_proxy(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    """A 429 reaches the SDK unchanged, so its own retry logic works (retry-after: 0)."""
    proxy = start_proxy()
    with pytest.raises(openai.RateLimitError):
        client(proxy, max_retries=2).chat.completions.create(
            model="gpt-4o-mini", messages=ask("x"), extra_headers={"X-Fake-Status": "429"}
        )
    assert len(fake_openai.seen) == 3


def test_upstream_down_is_502(start_proxy: Start, db_url: str) -> None:
    from tests.harness import free_port

    proxy = start_proxy(upstream=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("x"))
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unreachable"  # type: ignore[index]
    assert proxy.healthy()


def test_slow_upstream_times_out_504(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(CURATION_UPSTREAM_READ_TIMEOUT="0.3")
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=ask("x"), extra_headers={"X-Fake-Delay": "2"}
        )
    assert info.value.status_code == 504
    assert info.value.body["type"] == "api_error"  # type: ignore[index]


def test_client_disconnect_mid_stream(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    stream = client(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("a long answer about Vienna"),
        stream=True,
        extra_headers={"X-Fake-Chunk-Delay": "0.1"},
    )
    next(iter(stream))
    stream.close()
    wait_for(
        lambda: 'curation_unrecorded_total{reason="client_disconnect"} 1.0' in metrics(proxy),
        timeout=10,
    )
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("still fine"))
    assert [r["user_prompt"] for r in rows(db_url)] == ["still fine"]


def test_upstream_cuts_stream(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    with pytest.raises(openai.APIError):
        list(
            client(proxy).chat.completions.create(
                model="gpt-4o-mini",
                messages=ask("cut me"),
                stream=True,
                extra_headers={"X-Fake-Cut": "2"},
            )
        )
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("next"))
    assert [r["user_prompt"] for r in rows(db_url)] == ["next"]
    assert 'curation_unrecorded_total{reason="upstream_cut"} 1.0' in metrics(proxy)


def test_malformed_json_forwarded_not_recorded(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy()
    body = b'{"model": "gpt-4o-mini", "messages": [ oops'
    response = raw_http(
        proxy.port,
        b"POST /ns/locations/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
    )
    assert response.startswith(b"HTTP/1.1 400")
    assert b"could not parse the JSON body" in response
    assert fake_openai.seen[-1].body == body
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("ok"))
    assert [r["user_prompt"] for r in rows(db_url)] == ["ok"]


def test_oversize_body_413(start_proxy: Start, db_url: str, fake_openai: FakeOpenAI) -> None:
    proxy = start_proxy(CURATION_MAX_BODY_BYTES="2KiB")
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("x" * 5000))
    assert info.value.status_code == 413
    assert info.value.body["code"] == "request_too_large"  # type: ignore[index]
    assert fake_openai.seen == []
    # chunked upload with no Content-Length is cut off too
    response = raw_http(
        proxy.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + b"%x\r\n%s\r\n" % (4096, b"y" * 4096) + b"0\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 413")


def test_namespace_from_header_default_and_invalid(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(CURATION_DEFAULT_NAMESPACE="fallback")
    client(
        proxy, prefix="", default_headers={"X-Curation-Namespace": "geo"}
    ).chat.completions.create(model="gpt-4o-mini", messages=ask("header"))
    client(proxy, prefix="").chat.completions.create(model="gpt-4o-mini", messages=ask("default"))
    assert [r["user_prompt"] for r in rows(db_url, "geo_openai_chat_completion")] == ["header"]
    assert [r["user_prompt"] for r in rows(db_url, "fallback_openai_chat_completion")] == [
        "default"
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy, prefix="/ns/Bad-Name").chat.completions.create(
            model="gpt-4o-mini", messages=ask("x")
        )
    assert info.value.body["code"] == "invalid_namespace"  # type: ignore[index]


def test_no_create_namespaces_404(start_proxy: Start, db_url: str) -> None:
    query(db_url, "SELECT curation_create_namespace('known')")
    proxy = start_proxy(CURATION_CREATE_NAMESPACES="off")
    wait_for(lambda: "curation_database_up 1.0" in metrics(proxy))
    with pytest.raises(openai.NotFoundError) as info:
        client(proxy, prefix="/ns/unknown").chat.completions.create(
            model="gpt-4o-mini", messages=ask("x")
        )
    assert info.value.body["code"] == "namespace_not_found"  # type: ignore[index]
    client(proxy, prefix="/ns/known").chat.completions.create(
        model="gpt-4o-mini", messages=ask("y")
    )
    assert len(rows(db_url, "known_openai_chat_completion")) == 1
    assert query(db_url, "SELECT count(*) AS n FROM namespace")[0]["n"] == 1


def test_opt_out_and_other_paths_not_recorded(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy()
    c = client(proxy)
    c.chat.completions.create(
        model="gpt-4o-mini", messages=ask("secret"), extra_headers={"X-Curation-Log": "off"}
    )
    models = c.models.list()
    assert next(m.id for m in models) == "gpt-4o-mini-2024-07-18"
    assert fake_openai.seen[-1].path == "/v1/models"
    assert not any(k.lower().startswith("x-curation") for k in fake_openai.seen[0].headers)
    c.chat.completions.create(model="gpt-4o-mini", messages=ask("kept"))
    assert [r["user_prompt"] for r in rows(db_url)] == ["kept"]
    assert 'curation_unrecorded_total{reason="opt_out"} 1.0' in metrics(proxy)


def test_proxy_keys_mode(start_proxy: Start, db_url: str, fake_openai: FakeOpenAI) -> None:
    proxy = start_proxy(
        CURATION_PROXY_KEYS="client-key-one,client-key-two",
        OPENAI_API_KEY="sk-upstream-held-by-proxy",
    )
    client(proxy, api_key="client-key-two").chat.completions.create(
        model="gpt-4o-mini", messages=ask("x")
    )
    assert fake_openai.seen[-1].headers["Authorization"] == "Bearer sk-upstream-held-by-proxy"
    with pytest.raises(openai.AuthenticationError):
        client(proxy, api_key="client-key-wrong").chat.completions.create(
            model="gpt-4o-mini", messages=ask("y")
        )
    assert len(fake_openai.seen) == 1


def test_credentials_never_stored_or_logged(start_proxy: Start, db_url: str, tmp_path: Any) -> None:
    proxy = start_proxy(CURATION_ACCESS_LOG="on")
    c = client(proxy)
    c.chat.completions.create(
        model="gpt-4o-mini", messages=ask("creds"), extra_headers={"X-Curation-Tags": "a=b"}
    )
    list(c.chat.completions.create(model="gpt-4o-mini", messages=ask("creds stream"), stream=True))
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(
            model="gpt-4o-mini", messages=ask("x"), extra_headers={"X-Fake-Status": "429"}
        )
    rows(db_url, n=2)
    proxy.stop()
    dumped = query(db_url, "SELECT string_agg(t::text, ' ') AS s FROM openai_chat_completion t")[0][
        "s"
    ]
    assert "creds" in dumped and KEY not in dumped and "Bearer" not in dumped
    spooled = b"".join(p.read_bytes() for p in proxy.spool_dir.rglob("*") if p.is_file())
    assert b"creds" in spooled and KEY.encode() not in spooled and b"Authorization" not in spooled
    log = proxy.log()
    assert '"kind":"chat"' in log  # the access log did run
    assert KEY not in log and "Bearer" not in log


def test_health_ready_metrics(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("m"))
    rows(db_url)
    ready = wait_for(
        lambda: (
            (
                r := raw_http(
                    proxy.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
            ).startswith(b"HTTP/1.1 200")
            and r
        )
    )  # the recorder publishes its state every 0.25 s
    assert b'"database": "ok"' in ready and b'"recorder": "running"' in ready
    text = wait_for(lambda: (m := metrics(proxy)) and "curation_rows_written_total 1.0" in m and m)
    for name in (
        "curation_requests_total{",
        "curation_added_latency_seconds_bucket",
        "curation_upstream_latency_seconds",
        "curation_recorder_queue_depth 0.0",
        "curation_recorder_queue_bytes 0.0",
        "curation_spool_bytes",
        "curation_write_errors_total 0.0",
        "curation_dropped_total",
    ):
        assert name in text, name
    assert 'namespace="locations",status="200"' in text


def test_graceful_shutdown_finishes_streams(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    stream = client(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("slow goodbye from Prague"),
        stream=True,
        extra_headers={"X-Fake-Chunk-Delay": "0.15"},
    )
    it = iter(stream)
    first = next(it)
    assert proxy.proc is not None
    proxy.proc.send_signal(15)
    rest = list(it)
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert text == "Answer to: slow goodbye from Prague"
    assert proxy.proc.wait(20) == 0
    assert [r["user_prompt"] for r in rows(db_url)] == ["slow goodbye from Prague"]


def metrics(proxy: ProxyProcess) -> str:
    return raw_http(
        proxy.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).decode()


def start_failure(db_url: str, fake_openai: FakeOpenAI, **env: str) -> Any:
    import os
    import subprocess
    import sys

    from tests.harness import ROOT

    full = {**os.environ, "DATABASE_URL": db_url, "CURATION_UPSTREAM_URL": fake_openai.url, **env}  # type: ignore[attr-defined]
    return subprocess.run(
        [sys.executable, "-m", "curation", "proxy"],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_failures_are_one_line(
    db_url: str, fake_openai: FakeOpenAI, start_proxy: Start, tmp_path: Any
) -> None:
    from tests.harness import free_port

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    unwritable = start_failure(
        db_url,
        fake_openai,
        CURATION_SPOOL_DIR=str(blocked / "spool"),
        CURATION_LISTEN=f"127.0.0.1:{free_port()}",
    )
    assert unwritable.returncode == 2 and "is not writable" in unwritable.stderr
    assert len(unwritable.stderr.strip().splitlines()) == 1

    running = start_proxy()
    shared = start_failure(
        db_url,
        fake_openai,
        CURATION_SPOOL_DIR=str(running.spool_dir),
        CURATION_LISTEN=f"127.0.0.1:{free_port()}",
    )
    assert shared.returncode == 7 and "in use by another proxy" in shared.stderr

    taken = start_failure(
        db_url,
        fake_openai,
        CURATION_SPOOL_DIR=str(tmp_path / "other"),
        CURATION_LISTEN=f"127.0.0.1:{running.port}",
    )
    assert taken.returncode == 2 and "cannot listen on" in taken.stderr
    assert "Traceback" not in taken.stderr


def test_pool_limit_bounds_the_wait(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    """With the one pooled connection busy, a call waits at most the connect timeout
    for it, then gets an OpenAI-shaped 504, never reaching the upstream."""
    import threading

    proxy = start_proxy(
        CURATION_UPSTREAM_MAX_CONNECTIONS="1", CURATION_UPSTREAM_CONNECT_TIMEOUT="0.5"
    )
    slow = threading.Thread(
        target=lambda: client(proxy).chat.completions.create(
            model="gpt-4o-mini",
            messages=ask("holds the only connection"),
            extra_headers={"X-Fake-Delay": "8"},
        )
    )
    slow.start()
    # the upstream has the slow call: the only pooled connection is taken for 8 s
    wait_for(lambda: any(b"holds the only connection" in s.body for s in fake_openai.seen))
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("waits for it"))
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
    assert not any(b"waits for it" in s.body for s in fake_openai.seen)
    slow.join(20)
    assert [r["user_prompt"] for r in rows(db_url)] == ["holds the only connection"]
