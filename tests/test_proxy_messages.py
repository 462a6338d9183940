"""What the proxy says when it refuses (issue 11, item 7): a missing proxy key is told
apart from a wrong one, and a body too big names the setting that raises the limit.
The real proxy process, the real openai SDK and raw sockets."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess
from tests.test_proxy import ask, client, raw_http
from tests.test_proxy_limits import openai_error

Start = Callable[..., ProxyProcess]
KEYS = {"CURATION_PROXY_KEYS": "client-key-one", "OPENAI_API_KEY": "sk-upstream-held-by-proxy"}


def refused(proxy: ProxyProcess, api_key: str) -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as info:
        client(proxy, api_key=api_key).chat.completions.create(
            model="gpt-4o-mini", messages=ask("x")
        )
    return info.value


def test_a_missing_proxy_key_is_not_called_incorrect(
    start_proxy: Start, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy(**KEYS)
    for head in (b"", b"Authorization: Bearer\r\n", b"Authorization:   \r\n"):
        response = raw_http(  # curl without -H, or a client configured without a key
            proxy.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + head
            + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        missing = openai_error(response, 401)
        assert missing["code"] == "missing_api_key", head
        assert "No API key given" in missing["message"]
        assert "Authorization: Bearer" in missing["message"]
        assert "CURATION_PROXY_KEYS" in missing["message"]
        assert "Incorrect" not in missing["message"]
    wrong = refused(proxy, api_key="client-key-wrong")
    assert wrong.code == "invalid_api_key" and "Incorrect API key" in wrong.message
    assert "No API key" not in wrong.message
    client(proxy, api_key="client-key-one").chat.completions.create(
        model="gpt-4o-mini", messages=ask("y")
    )
    assert len(fake_openai.seen) == 1  # only the good key got through


def test_the_413_names_the_setting_that_raises_the_limit(
    start_proxy: Start, fake_openai: FakeOpenAI
) -> None:
    proxy = start_proxy(CURATION_MAX_BODY_BYTES="2KiB")
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="gpt-4o-mini", messages=ask("x" * 5000))
    assert info.value.status_code == 413
    message = info.value.body["message"]  # type: ignore[index]
    assert "2048 bytes" in message
    assert "CURATION_MAX_BODY_BYTES" in message and "--max-body-bytes" in message
    chunked = raw_http(  # no Content-Length: cut off while reading, the same message
        proxy.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + b"%x\r\n%s\r\n" % (4096, b"y" * 4096) + b"0\r\n\r\n",
    )
    assert "CURATION_MAX_BODY_BYTES" in openai_error(chunked, 413)["message"]
    assert fake_openai.seen == []
