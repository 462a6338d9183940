"""The proxy against hostile clients and careless operators (issue 10): settings out of
range, stream framing, what aiohttp's HTTP parser refuses, slow clients, odd paths,
namespaces created on use. The real proxy process, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation import config
from curation.errors import InvalidInput
from tests.fake_openai import FakeOpenAI
from tests.harness import ROOT, ProxyProcess, free_port, query, wait_for
from tests.test_proxy import KEY, ask, client, metrics, rows

Start = Callable[..., ProxyProcess]

# -- helpers ----------------------------------------------------------------


def exchange(port: int, *parts: bytes, pause: float = 0.0, shut: bool = False) -> bytes:
    """Send ``parts`` (pausing between them), read until the proxy closes or 10 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            s.sendall(part)
        if shut:
            s.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(65536):
                data += chunk
    return data


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def openai_error(response: bytes, status: int) -> dict[str, Any]:
    """The response is ``status`` with OpenAI's error object as JSON; returns the error."""
    got, headers, body = parse(response)
    assert got == status, response[:300]
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def requests_counted(proxy: ProxyProcess, status: int) -> float:
    total = 0.0
    for line in metrics(proxy).splitlines():
        if line.startswith("curation_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- section 3: every size, count and duration setting is checked where it is parsed


def run_proxy(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unreachable",
        "CURATION_UPSTREAM_URL": "http://127.0.0.1:1",
        "CURATION_SPOOL_DIR": str(tmp_path / "spool"),
        "CURATION_LISTEN": f"127.0.0.1:{free_port()}",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "curation", "proxy", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,  # a value let through starts a proxy that never exits: the test fails
    )


def assert_refused(result: subprocess.CompletedProcess[str], names: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert names in lines[0]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--spool-max-bytes", "-5"),
        ("--spool-max-bytes", "10"),
        ("--max-body-bytes", "lots"),
        ("--max-body-bytes", "0"),
        ("--connect-timeout", "-1"),
        ("--read-timeout", "nan"),
        ("--max-connections", "0"),
        ("--idle-timeout", "0"),
        ("--body-timeout", "inf"),
        ("--max-namespaces", "-1"),
        ("--max-client-connections", "0"),
        ("--recorder-stall-seconds", "0"),
        ("--student-timeout", "-2"),
    ],
)
def test_bad_limit_flags_exit_2(tmp_path: Path, flag: str, value: str) -> None:
    assert_refused(run_proxy(tmp_path, flag, value), flag)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CURATION_SPOOL_MAX_BYTES", "-5"),
        ("CURATION_SPOOL_MAX_BYTES", "0"),
        ("CURATION_SPOOL_MAX_BYTES", "infk"),
        ("CURATION_MAX_BODY_BYTES", "-1"),
        ("CURATION_UPSTREAM_CONNECT_TIMEOUT", "-1"),
        ("CURATION_UPSTREAM_READ_TIMEOUT", "nan"),
        ("CURATION_UPSTREAM_MAX_CONNECTIONS", "0"),
        ("CURATION_UPSTREAM_MAX_CONNECTIONS", "1.5"),
        ("CURATION_IDLE_TIMEOUT", "0"),
        ("CURATION_BODY_TIMEOUT", "-3"),
        ("CURATION_MAX_NAMESPACES", "0"),
        ("CURATION_MAX_CLIENT_CONNECTIONS", "-1"),
        ("CURATION_MAX_CLIENT_CONNECTIONS", "2000000"),
        ("CURATION_RECORDER_STALL_SECONDS", "nan"),
        ("CURATION_STUDENT_TIMEOUT", "1e9"),
    ],
)
def test_bad_limit_env_vars_refused(var: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=var):
        config.load(env={var: value})


def test_bad_limit_env_var_stops_the_proxy(tmp_path: Path) -> None:
    assert_refused(run_proxy(tmp_path, CURATION_SPOOL_MAX_BYTES="-5"), "CURATION_SPOOL_MAX_BYTES")


def test_limits_in_range_accepted() -> None:
    s = config.load(
        env={
            "CURATION_SPOOL_MAX_BYTES": "1MiB",
            "CURATION_IDLE_TIMEOUT": "0.5",
            "CURATION_BODY_TIMEOUT": "2",
            "CURATION_MAX_NAMESPACES": "3",
        }
    )
    assert (s.spool_max_bytes, s.idle_timeout, s.body_timeout, s.max_namespaces) == (
        1 << 20,
        0.5,
        2.0,
        3,
    )


# -- section 4: the end of a stream comes from its framing -------------------


def test_stream_whose_content_says_done_is_recorded_whole(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    text = "[DONE] then data: [DONE] and more after it"
    fake_openai.answers["gpt-4o-mini"] = lambda request: text
    proxy = start_proxy()
    stream = client(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("say the terminator"),
        stream=True,
        extra_headers={"X-Fake-Chunk-Delay": "0.02"},  # one event per read
    )
    got = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert got == text
    [row] = rows(db_url)
    assert row["response"]["choices"][0]["message"]["content"] == text


class ScriptedUpstream:
    """An upstream that answers every call with these bytes, one write per part."""

    def __init__(self, head: bytes, parts: list[bytes], pause: float = 0.05) -> None:
        self.head, self.parts, self.pause = head, parts, pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(self.head)
                for part in self.parts:
                    time.sleep(self.pause)
                    conn.sendall(part)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []

    def make(*args: Any, **kw: Any) -> ScriptedUpstream:
        made.append(ScriptedUpstream(*args, **kw))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def sse_event(content: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"


def test_stream_end_found_across_reads_and_crlf(
    start_proxy: Start, db_url: str, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """Payloads that contain the terminator, a terminator split between reads, \\r\\n."""
    contents = ["data: [DONE]", "\n\ndata: [DONE]\n\n", "[DONE]", "end"]
    events = [sse_event(c) for c in contents[:-1]] + [sse_event(contents[-1], "stop")]
    upstream = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
        [*events, b"data: [DO", b"NE]\r", b"\n\r\n"],
    )
    proxy = start_proxy(upstream=upstream.url)
    stream = client(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=ask("framing"), stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "".join(contents)
    [row] = rows(db_url)
    assert row["response"]["choices"][0]["message"]["content"] == "".join(contents)
    assert row["response"]["choices"][0]["finish_reason"] == "stop"


# -- section 5 and 7: what the HTTP parser refuses gets OpenAI's shape, never a log line


def test_huge_authorization_header_answered_as_json_and_never_logged(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy(CURATION_ACCESS_LOG="on")
    secret = "sk-hostile-" + "S3CRET" * 1500
    for method in (b"GET /v1/models", b"POST /ns/locations/v1/chat/completions"):
        response = exchange(
            proxy.port,
            method + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret.encode() + b"\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        error = openai_error(response, 431)
        assert error["code"] == "request_header_too_large"
        assert b"S3CRET" not in response
    assert fake_openai.seen == []
    assert proxy.healthy()
    proxy.stop()
    log = proxy.log()
    assert "S3CRET" not in log and "sk-hostile" not in log
    assert "Traceback" not in log


def test_oversized_url_and_too_many_headers_answered_as_json(start_proxy: Start) -> None:
    proxy = start_proxy()
    long_url = b"GET /v1/models?q=" + b"u" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert openai_error(exchange(proxy.port, long_url), 414)["code"] == "request_uri_too_long"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    response = exchange(proxy.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert openai_error(response, 431)["code"] == "request_header_too_large"
    garbage = exchange(proxy.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert openai_error(garbage, 400)["code"] == "malformed_request"
    assert requests_counted(proxy, 414) == 1 and requests_counted(proxy, 431) == 1
    assert "uuuuuuuuuu" not in proxy.log() and "X-H299" not in proxy.log()


def test_malformed_chunked_body_answered_as_json(start_proxy: Start) -> None:
    proxy = start_proxy()
    response = exchange(
        proxy.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nS3CRETS3CRET\r\n0\r\n\r\n",
    )
    assert openai_error(response, 400)["code"] == "malformed_request"
    proxy.stop()
    assert "S3CRET" not in proxy.log() and "Traceback" not in proxy.log()


def test_parser_errors_redacted_from_any_log_record() -> None:
    import logging

    from aiohttp.http_exceptions import LineTooLong

    from curation.logs import JsonFormatter
    from curation.proxy.protocol import RedactParserErrors

    try:
        raise LineTooLong(b"Bearer sk-S3CRET", 8190)
    except LineTooLong as exc:
        record = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling %s",
            ("x",),
            (LineTooLong, exc, None),
        )
    assert RedactParserErrors().filter(record)
    line = JsonFormatter().format(record)
    assert "S3CRET" not in line and "LineTooLong" in line


# -- section 7: the proxy's own answers are counted --------------------------


def test_own_answers_counted_in_requests_total(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy(
        CURATION_PROXY_KEYS="client-key", OPENAI_API_KEY="sk-up", CURATION_MAX_BODY_BYTES="2KiB"
    )
    c = client(proxy, api_key="client-key")
    with pytest.raises(openai.BadRequestError):
        client(proxy, prefix="/ns/Bad-Name", api_key="client-key").chat.completions.create(
            model="gpt-4o-mini", messages=ask("x")
        )
    with pytest.raises(openai.AuthenticationError):
        client(proxy, api_key="wrong").chat.completions.create(
            model="gpt-4o-mini", messages=ask("x")
        )
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="gpt-4o-mini", messages=ask("x" * 5000))
    assert info.value.status_code == 413
    openai_error(exchange(proxy.port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"), 404)
    text = metrics(proxy)
    for status in (400, 401, 404, 413):
        assert requests_counted(proxy, status) == 1, (status, text)
    # not authenticated: not labelled with the namespace it named
    assert 'curation_requests_total{kind="chat",namespace="",status="401"} 1.0' in text
    # admitted (created on use): labelled
    assert 'curation_requests_total{kind="chat",namespace="locations",status="413"} 1.0' in text


# -- section 7: dot segments never reach the upstream ------------------------


@pytest.mark.parametrize(
    "path",
    [
        b"/ns/ok/v1/../../v1/chat/completions",
        b"/ns/ok/v1/%2e%2e/%2E%2e/v1/chat/completions",
        b"/v1/./chat/completions",
        b"/v1/models/.%2E",
        b"/v1/models/..%2fsecrets",
        b"/ns/ok/v1/models/..?x=1",
    ],
)
def test_dot_segments_refused(start_proxy: Start, fake_openai: FakeOpenAI, path: bytes) -> None:
    proxy = start_proxy()
    response = exchange(
        proxy.port,
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert openai_error(response, 400)["code"] == "invalid_path"
    assert fake_openai.seen == []


def test_dots_in_a_query_or_inside_a_segment_forwarded(
    start_proxy: Start, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy()
    for target in (b"/v1/models?after=../x", b"/v1/models/ft...x"):
        exchange(
            proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert [s.path for s in fake_openai.seen] == ["/v1/models"]  # the fake records known routes


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/models/ft:gpt-4o-mini:org::abc", True),
        ("/ns/a/v1/files/file-1/content?x=../..", True),
        ("/v1/models/a..b", True),
        ("/v1/..", False),
        ("/v1/%2E", False),
        ("/v1/%2e%2E/x", False),
        ("/v1/a%2Fb", False),
        ("/v1/a%5cb", False),
        ("/v1/models/", True),
        ("/v1//models", False),
        ("//v1/models", False),
        ("/ns/ok//v1/models?x=//", False),
    ],
)
def test_check_path(path: str, allowed: bool) -> None:
    from curation.proxy import routing

    if allowed:
        routing.check_path(path)
    else:
        with pytest.raises(routing.RouteError):
            routing.check_path(path)


@given(st.text())
def test_check_path_is_total(path: str) -> None:
    from curation.proxy import routing

    with contextlib.suppress(routing.RouteError):
        routing.check_path(path)


# -- section 7: HTTP/1.0 POST without Content-Length is answered -------------


def test_http10_post_without_length_is_answered(
    start_proxy: Start, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy()
    head = b"POST /ns/locations/v1/chat/completions HTTP/1.0\r\nHost: x\r\n\r\n"
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    # the body in a later packet: the proxy sees a POST with no length
    error = openai_error(exchange(proxy.port, head, body, pause=0.2), 411)
    assert error["code"] == "length_required"
    # all at once, the client closing its side as `nc` does
    response = exchange(proxy.port, head + body, shut=True)
    status, headers, _ = parse(response)
    assert status in (400, 411) and headers["content-type"].startswith("application/json")
    assert fake_openai.seen == []
    assert proxy.healthy()


# -- section 7: slow and idle clients are cut off ----------------------------


def test_slow_request_head_cut_off(start_proxy: Start) -> None:
    proxy = start_proxy(CURATION_IDLE_TIMEOUT="1")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for _ in range(50):  # a byte every 0.2 s: never a whole head
                s.sendall(b"X")
                time.sleep(0.2)
                s.setblocking(False)
                try:
                    if s.recv(100) == b"":
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
    assert time.monotonic() - started < 4
    assert proxy.healthy()


def test_idle_keep_alive_connection_closed(start_proxy: Start) -> None:
    proxy = start_proxy(CURATION_IDLE_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while s.recv(65536):  # the proxy closes the idle connection: recv returns b""
            pass
        assert 0.5 < time.monotonic() - started < 4


def test_slow_body_gets_408(start_proxy: Start, fake_openai: FakeOpenAI) -> None:
    proxy = start_proxy(CURATION_BODY_TIMEOUT="1")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        s.settimeout(0.2)
        response = b""
        while time.monotonic() - started < 8 and b"}" not in response:  # a byte every 0.2 s
            with contextlib.suppress(OSError):
                s.sendall(b" ")
            with contextlib.suppress(TimeoutError):
                response += s.recv(65536)
    assert time.monotonic() - started < 4
    assert openai_error(response, 408)["code"] == "request_timeout"
    assert fake_openai.seen == []


# -- section 7: namespaces created on use are capped -------------------------


def test_namespaces_created_on_use_are_capped(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy(CURATION_MAX_NAMESPACES="2")
    wait_for(lambda: "curation_database_up 1.0" in metrics(proxy))
    for ns in ("first", "second"):
        client(proxy, prefix=f"/ns/{ns}").chat.completions.create(
            model="gpt-4o-mini", messages=ask(ns)
        )
    calls = len(fake_openai.seen)
    with pytest.raises(openai.NotFoundError) as info:
        client(proxy, prefix="/ns/third").chat.completions.create(
            model="gpt-4o-mini", messages=ask("x")
        )
    assert info.value.body["code"] == "namespace_limit_reached"  # type: ignore[index]
    assert "curation ns create third" in info.value.body["message"]  # type: ignore[index]
    assert len(fake_openai.seen) == calls  # refused, not forwarded
    client(proxy, prefix="/ns/first").chat.completions.create(
        model="gpt-4o-mini", messages=ask("again")
    )
    rows(db_url, "first_openai_chat_completion", n=2)
    rows(db_url, "second_openai_chat_completion")
    query(db_url, "SELECT curation_create_namespace('third')")  # as `curation ns create` does
    wait_for(
        lambda: client(proxy, prefix="/ns/third").chat.completions.create(
            model="gpt-4o-mini", messages=ask("created by hand")
        ),
        timeout=10,
        interval=0.5,
    )
    assert [r["user_prompt"] for r in rows(db_url, "third_openai_chat_completion")] == [
        "created by hand"
    ]


# -- review: gzip request bodies, label cardinality, connections, empty segments


def post_raw(path: bytes, body: bytes, *headers: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"Connection: close\r\n\r\n"
        + body
    )


def test_gzip_request_body_forwarded_and_recorded(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    import gzip

    proxy = start_proxy()
    wait_for(lambda: "curation_database_up 1.0" in metrics(proxy))
    body = json.dumps({"model": "gpt-4o-mini", "messages": ask("zipped")}).encode()
    response = exchange(
        proxy.port,
        post_raw(b"/ns/gz/v1/chat/completions", gzip.compress(body), b"Content-Encoding: gzip"),
    )
    assert parse(response)[0] == 200, response[:400]
    seen = fake_openai.seen[-1]
    assert json.loads(seen.body) == json.loads(body)
    assert "content-encoding" not in {k.lower() for k in seen.headers}
    assert [r["user_prompt"] for r in rows(db_url, "gz_openai_chat_completion")] == ["zipped"]


def test_bad_gzip_and_gzip_bomb_refused(start_proxy: Start, fake_openai: FakeOpenAI) -> None:
    import gzip

    proxy = start_proxy(CURATION_MAX_BODY_BYTES="100000")
    error = openai_error(
        exchange(
            proxy.port,
            post_raw(b"/ns/gz/v1/chat/completions", b"not gzip at all", b"Content-Encoding: gzip"),
        ),
        400,
    )
    assert "gzip" in error["message"] or "Content-Encoding" in error["message"]
    bomb = gzip.compress(b" " * 5_000_000)  # ~5 KB that inflates to 5 MB
    error = openai_error(
        exchange(
            proxy.port, post_raw(b"/ns/gz/v1/chat/completions", bomb, b"Content-Encoding: gzip")
        ),
        413,
    )
    assert error["code"] == "request_too_large"
    assert fake_openai.seen == []
    assert "Traceback" not in proxy.log() and "Unhandled" not in proxy.log()
    assert proxy.healthy()


def namespace_labels(proxy: ProxyProcess) -> set[str]:
    return {
        line.split('namespace="', 1)[1].split('"', 1)[0]
        for line in metrics(proxy).splitlines()
        if 'namespace="' in line and not line.startswith("#")
    }


def test_refused_namespaces_add_no_metric_series(
    start_proxy: Start, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy(CURATION_MAX_NAMESPACES="1")
    wait_for(lambda: "curation_database_up 1.0" in metrics(proxy))
    client(proxy, prefix="/ns/kept").chat.completions.create(model="gpt-4o-mini", messages=ask("x"))
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    for i in range(30):
        response = exchange(
            proxy.port, post_raw(f"/ns/refused{i}/v1/chat/completions".encode(), body)
        )
        assert parse(response)[0] == 404
    assert namespace_labels(proxy) <= {"", "kept"}


def test_unauthenticated_calls_not_labelled_with_their_namespace(
    start_proxy: Start, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy(CURATION_PROXY_KEYS="sk-proxy-good", OPENAI_API_KEY=KEY)
    for i in range(5):
        response = exchange(
            proxy.port, post_raw(f"/ns/stranger{i}/v1/chat/completions".encode(), b"{}")
        )
        assert parse(response)[0] == 401
    assert namespace_labels(proxy) <= {""}


def test_connection_closed_by_client_is_released(start_proxy: Start) -> None:
    proxy = start_proxy(CURATION_IDLE_TIMEOUT="60", CURATION_MAX_CLIENT_CONNECTIONS="20")
    for _ in range(3):  # over the cap twice over if closed connections were held
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                s.sendall(b"P")
        time.sleep(0.3)
        assert wait_for(proxy.healthy, timeout=3)
    assert "curation_client_connections_refused_total 0.0" in metrics(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # half a head
        s.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert s.recv(100) == b""  # closed at once, not after the 60 s idle timeout
        assert time.monotonic() - started < 2


def test_client_connections_capped(start_proxy: Start) -> None:
    proxy = start_proxy(CURATION_IDLE_TIMEOUT="60", CURATION_MAX_CLIENT_CONNECTIONS="20")
    held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(50)]
    try:
        time.sleep(0.5)
        refused = []
        for s in held:
            s.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                refused.append(s.recv(65536))  # the first 20 are held: nothing to read
        assert len(refused) == 30
        assert openai_error(refused[0], 503)["code"] == "too_many_connections"
        assert "curation_client_connections_refused_total 30.0" in metrics_after_release(
            proxy, held
        )
    finally:
        for s in held:
            s.close()
    assert proxy.log().count("client connection cap") == 1


def metrics_after_release(proxy: ProxyProcess, held: list[socket.socket]) -> str:
    for s in held:
        s.close()
    wait_for(proxy.healthy, timeout=5)
    return metrics(proxy)


def test_half_close_after_a_whole_request_still_answered(start_proxy: Start) -> None:
    proxy = start_proxy()
    response = exchange(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", shut=True)
    assert response.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "path", [b"/ns/ok/v1//chat/completions", b"/v1//chat/completions", b"//v1/chat/completions"]
)
def test_empty_segments_refused(start_proxy: Start, fake_openai: FakeOpenAI, path: bytes) -> None:
    proxy = start_proxy()
    assert openai_error(exchange(proxy.port, post_raw(path, b"{}")), 400)["code"] == "invalid_path"
    assert fake_openai.seen == []
