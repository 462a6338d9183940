"""The Responses API end to end: the real openai SDK (and the openai-agents SDK) ->
`curation proxy` -> the fake upstream; rows checked in a real PostgreSQL, then
included, exported and validated as chat examples, evaluated and served."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from curation.db.connect import connection
from curation.export import validate
from curation.export.run import ExportRequest, export
from tests.cli import run, run_json
from tests.fake_openai import FakeOpenAI
from tests.harness import ProxyProcess, query, wait_for

KEY = "sk-test-responses-8c1d"
LONG = "You are the long production weather prompt. " * 20
SHORT = "Answer about the weather."
TABLE = "weather_openai_chat_completion"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
Start = Callable[..., ProxyProcess]


def _metrics(proxy: ProxyProcess) -> str:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def client(proxy: ProxyProcess, **kw: Any) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/ns/weather/v1", api_key=KEY, max_retries=0, **kw)


def rows(db_url: str, n: int = 1) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        try:
            found = query(db_url, f"SELECT * FROM {TABLE} ORDER BY id")
        except Exception:
            return None
        return found if len(found) >= n else None

    return wait_for(enough, timeout=15)  # type: ignore[no-any-return]


def export_all(db_url: str, out: Path) -> dict[str, Any]:
    """Include every row, export, and check every line as OpenAI checks a file."""
    query(db_url, f"UPDATE {TABLE} SET included = now()")
    with connection(db_url) as conn:
        result = export(
            conn,
            ExportRequest(
                namespace="weather",
                out_dir=out,
                base_model="gpt-4o-mini-2024-07-18",
                system_prompt=SHORT,
                validation_fraction=0.0,
            ),
        )
    examples = [json.loads(line) for line in result.train_path.read_text().splitlines()]
    for example in examples:
        validate.check_chat(example)
        assert LONG.strip() not in json.dumps(example)  # the production prompt never trains
        assert example["messages"][0] == {"role": "system", "content": SHORT}
    return {"examples": examples, "skipped": result.manifest["skipped"]}


def test_plain_response_recorded(start_proxy: Start, db_url: str, fake_openai: FakeOpenAI) -> None:
    proxy = start_proxy()
    raw = client(proxy).responses.with_raw_response.create(
        model="gpt-4o-mini", instructions=LONG, input="Is it raining in Lyon?", temperature=0.3
    )
    reply = raw.parse()
    assert reply.output_text == "Answer to: Is it raining in Lyon?"
    assert raw.headers.get("x-request-id") and raw.headers.get("x-ratelimit-limit-requests")
    [row] = rows(db_url)
    assert (row["api"], row["user_prompt"], row["system_prompt"]) == (
        "responses",
        "Is it raining in Lyon?",
        LONG,
    )
    assert row["response"] == json.loads(raw.http_response.content)  # as returned
    assert row["response_id"] == reply.id and row["previous_response_id"] is None
    assert row["request"]["input"] == "Is it raining in Lyon?"
    assert row["request"]["temperature"] == 0.3
    assert (row["model"], row["streamed"]) == ("gpt-4o-mini-2024-07-18", False)
    assert reply.usage is not None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        reply.usage.input_tokens,
        reply.usage.output_tokens,
    )
    assert row["upstream_request_id"] == raw.headers["x-request-id"]
    sent = fake_openai.seen[-1]
    assert sent.body == raw.http_request.content  # byte for byte
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert 'curation_requests_total{kind="responses",namespace="weather",status="200"}' in (
        _metrics(proxy)
    )
    [listed] = run_json(db_url, "list", "weather")  # curators see the answer's text
    assert listed["answer"] == "Answer to: Is it raining in Lyon?"
    shown = run(db_url, "show", "weather", str(row["id"]))
    assert "Answer to: Is it raining in Lyon?" in shown.stdout


def test_stream_passed_through_and_reassembled(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    stream = client(proxy).responses.create(
        model="gpt-4o",
        instructions=LONG,
        input=[{"role": "user", "content": "Forecast for Berlin, Rome and Madrid, please"}],
        stream=True,
        extra_headers={"X-Fake-Chunk-Delay": "0.15"},
    )
    events, arrived = [], []
    for event in stream:
        events.append(event)
        arrived.append(time.perf_counter())
    # 16 events 150 ms apart upstream (2.25 s): they reach the client as they come, not
    # buffered whole (a loaded machine may bunch the first few)
    assert len(events) == 16 and arrived[-1] - arrived[0] > 1.0
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Answer to: Forecast for Berlin, Rome and Madrid, please"
    completed = events[-1]
    assert completed.type == "response.completed"
    [row] = rows(db_url)
    assert row["streamed"] is True and row["api"] == "responses"
    assert row["response"] == completed.response.model_dump(mode="json", exclude_unset=True)
    assert row["response_id"] == completed.response.id
    assert row["user_prompt"] == "Forecast for Berlin, Rome and Madrid, please"


def test_tool_round_trip_recorded_and_exported(
    start_proxy: Start, db_url: str, tmp_path: Path
) -> None:
    proxy = start_proxy()
    c = client(proxy)
    conversation: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.responses.create(model="gpt-4o", instructions=LONG, input=conversation, tools=[TOOL])  # type: ignore[arg-type]
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    conversation += [item.model_dump(exclude_none=True) for item in first.output]
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "22C"})
    second = c.responses.create(model="gpt-4o", instructions=LONG, input=conversation, tools=[TOOL])  # type: ignore[arg-type]
    assert second.output_text == "The tool said: 22C"
    asked, answered = rows(db_url, 2)
    assert asked["user_prompt"] == "What is the weather in Paris?"
    assert asked["response"]["output"][0]["type"] == "function_call"
    for made_up in (call.call_id, call.id or "fc_", "call_", "fc_"):
        assert made_up not in answered["user_prompt"]
    assert "get_weather" in answered["user_prompt"] and "22C" in answered["user_prompt"]
    out = export_all(db_url, tmp_path)
    assert out["skipped"] == []
    calling, finishing = out["examples"]
    assert calling["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert calling["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
    ]
    assert [m["role"] for m in finishing["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert finishing["messages"][3] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": "22C",
    }
    assert finishing["messages"][-1] == {"role": "assistant", "content": "The tool said: 22C"}


def test_previous_response_id_rebuilt_or_skipped(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    proxy = start_proxy()
    c = client(proxy)
    first = c.responses.create(model="gpt-4o", instructions=LONG, input="Weather in Oslo?")
    second = c.responses.create(
        model="gpt-4o", instructions=LONG, input="And in Bergen?", previous_response_id=first.id
    )
    # an earlier turn that never went through the proxy
    direct = OpenAI(base_url=f"{fake_openai.url}/v1", api_key=KEY, max_retries=0)  # type: ignore[attr-defined]
    elsewhere = direct.responses.create(model="gpt-4o", input="Weather in Cairo?")
    orphan = c.responses.create(
        model="gpt-4o", instructions=LONG, input="And in Giza?", previous_response_id=elsewhere.id
    )
    _, two, three = rows(db_url, 3)
    assert two["previous_response_id"] == first.id and two["response_id"] == second.id
    assert two["user_prompt"].endswith("And in Bergen?") and first.id in two["user_prompt"]
    assert three["previous_response_id"] == elsewhere.id
    rebuilt = query(
        db_url,
        "SELECT curation_responses_request(namespace, request) AS r FROM "
        f"{TABLE} WHERE id = ANY(%s) ORDER BY id",
        [[two["id"], three["id"]]],
    )
    assert [i.get("role") or i.get("type") for i in rebuilt[0]["r"]["input"]] == [
        "user",
        "assistant",
        "user",
    ]
    assert rebuilt[1]["r"] is None  # the row says so: its earlier turn is not recorded
    out = export_all(db_url, tmp_path)
    assert [s["id"] for s in out["skipped"]] == [three["id"]]
    assert elsewhere.id in out["skipped"][0]["reason"]
    assert "not recorded" in out["skipped"][0]["reason"]
    _, continued = out["examples"]
    assert continued["messages"] == [
        {"role": "system", "content": SHORT},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And in Bergen?"},
        {"role": "assistant", "content": second.output_text},
    ]
    assert orphan.output_text  # the client itself was served normally


def test_a_response_that_did_not_complete_is_not_recorded(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    c = client(proxy)
    incomplete = c.responses.create(
        model="gpt-4o", input="Too long an answer", extra_headers={"X-Fake-Incomplete": "1"}
    )
    assert incomplete.status == "incomplete"  # the client gets it as the upstream sent it
    events = list(
        c.responses.create(
            model="gpt-4o",
            input="A failing stream",
            stream=True,
            extra_headers={"X-Fake-Fail": "1"},
        )
    )
    assert events[-1].type == "response.failed"
    with pytest.raises(openai.APIError):
        list(
            c.responses.create(
                model="gpt-4o", input="A cut stream", stream=True, extra_headers={"X-Fake-Cut": "4"}
            )
        )
    c.responses.create(model="gpt-4o", input="A normal call")
    rows(db_url)
    time.sleep(0.5)  # anything spooled before it is written with or before it
    assert [r["user_prompt"] for r in query(db_url, f"SELECT * FROM {TABLE}")] == ["A normal call"]
    metrics = _metrics(proxy)
    assert "curation_unrecordable_total 2.0" in metrics  # set aside in rejected.jsonl, counted
    assert 'curation_unrecorded_total{reason="upstream_cut"} 1.0' in metrics
    rejected = (proxy.spool_dir / "rejected.jsonl").read_text()
    assert rejected.count("did not complete") == 2


def test_unrecorded_paths_counted_by_name(start_proxy: Start, db_url: str) -> None:
    proxy = start_proxy()
    c = client(proxy)
    made = c.responses.create(model="gpt-4o", input="Weather in Lima?")
    assert c.responses.retrieve(made.id).id == made.id  # GET /v1/responses/{id}: forwarded
    c.models.list()
    c.models.list()
    for i in range(3):
        with pytest.raises(openai.NotFoundError):
            c.get(f"/nothing_{i}", cast_to=object)
    metrics = _metrics(proxy)
    assert 'curation_unrecorded_requests_total{path="/v1/responses"} 1.0' in metrics
    assert 'curation_unrecorded_requests_total{path="/v1/models"} 2.0' in metrics
    assert 'curation_unrecorded_requests_total{path="other"} 3.0' in metrics
    assert "nothing_" not in metrics
    rows(db_url)


def test_serve_rewrites_instructions(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    query(db_url, "SELECT curation_create_namespace('weather', %s)", [SHORT])
    query(db_url, "UPDATE namespace SET serve_model = 'ft:gpt-4o-mini:acme:weather:1'")
    proxy = start_proxy(STUDENT_KEY="sk-student-1")
    c = client(proxy)
    body = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Snow?"}]

    def served() -> bool:
        c.responses.create(model="gpt-4o", instructions=LONG, input=body)  # type: ignore[arg-type]
        return bool(json.loads(fake_openai.seen[-1].body)["model"].startswith("ft:"))

    wait_for(served, timeout=15, interval=0.2)
    sent = json.loads(fake_openai.seen[-1].body)
    assert sent["instructions"] == SHORT and sent["input"] == [body[1]]
    assert LONG.strip() not in fake_openai.seen[-1].body.decode()
    [row] = wait_for(lambda: query(db_url, f"SELECT * FROM {TABLE} WHERE rewritten"), timeout=10)
    assert row["api"] == "responses" and row["request"]["instructions"] == LONG  # the client's own
    # a student served at its own endpoint is asked at its /responses
    query(
        db_url,
        "UPDATE namespace SET serve_endpoint = %s, serve_endpoint_key_env = 'STUDENT_KEY'",
        [f"{fake_openai.url}/v1"],  # type: ignore[attr-defined]
    )

    def at_endpoint() -> bool:
        stream = c.responses.create(model="gpt-4o", instructions=LONG, input="Hail?", stream=True)
        assert list(stream)[-1].type == "response.completed"
        return fake_openai.seen[-1].headers.get("Authorization") == "Bearer sk-student-1"

    wait_for(at_endpoint, timeout=15, interval=0.2)
    assert fake_openai.seen[-1].path == "/v1/responses"
    assert json.loads(fake_openai.seen[-1].body)["instructions"] == SHORT


def test_openai_agents_sdk_run_is_recorded_and_exported(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The Agents SDK with its default model (the Responses API), through the proxy."""
    agents = pytest.importorskip("agents", reason="needs the dev extra: openai-agents")
    proxy = start_proxy()
    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(
        openai.AsyncOpenAI(base_url=f"{proxy.url}/ns/weather/v1", api_key=KEY, max_retries=0),
        use_for_tracing=False,
    )
    looked_up: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        looked_up.append(city)
        return "sunny, 24C"

    agent = agents.Agent(name="Forecaster", instructions=LONG, tools=[get_weather])
    result = agents.Runner.run_sync(agent, "What's the weather in Nice?")
    assert result.final_output == "The tool said: sunny, 24C"
    assert looked_up and all(s.path == "/v1/responses" for s in fake_openai.seen)
    asked, answered = rows(db_url, 2)
    assert asked["api"] == answered["api"] == "responses"
    assert asked["user_prompt"] == "What's the weather in Nice?" and asked["system_prompt"] == LONG
    out = export_all(db_url, tmp_path)
    assert out["skipped"] == []
    final = out["examples"][-1]
    assert final["messages"][-1] == {"role": "assistant", "content": "The tool said: sunny, 24C"}
    assert [m["role"] for m in final["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert final["tools"][0]["function"]["name"] == "get_weather"


def test_eval_and_relabel_read_responses_rows(
    start_proxy: Start, db_url: str, fake_openai: FakeOpenAI
) -> None:
    """Eval replays a Responses row as the chat call it amounts to (earlier turns rebuilt);
    relabel proposes a chat answer, which the curator accepts as the row's correction."""
    proxy = start_proxy()
    c = client(proxy)
    first = c.responses.create(model="gpt-4o", instructions=LONG, input="Weather in Oslo?")
    c.responses.create(
        model="gpt-4o", instructions=LONG, input="And in Bergen?", previous_response_id=first.id
    )
    c.responses.create(model="gpt-4o", instructions=LONG, input="Weather in Quito?")
    one, _, three = rows(db_url, 3)
    query(db_url, "UPDATE namespace SET training_system_prompt = %s", [SHORT])
    query(db_url, f"UPDATE {TABLE} SET included = now() WHERE id <> %s", [three["id"]])
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"{fake_openai.url}/v1"}  # type: ignore[attr-defined]
    before = len(fake_openai.seen)
    ft = "ft:gpt-4o-mini-2024-07-18:org:weather:1"
    args = ["eval", "weather", "--model", ft, "--baseline", "gpt-4o", "--rows", "all-included"]
    result = run(db_url, *args, "--json", env=env)
    assert result.exit_code == 0, result.output
    report = {m["model"]: m for m in json.loads(result.stdout)["models"]}
    assert report["gpt-4o"]["agreement_pct"] == 100.0 and report[ft]["errors"] == 0
    sent = [json.loads(s.body) for s in fake_openai.seen[before:]]
    assert {s.path for s in fake_openai.seen[before:]} == {"/v1/chat/completions"}
    continued = [r for r in sent if r["messages"][-1]["content"] == "And in Bergen?"]
    assert [r["model"] for r in continued] == ["gpt-4o", ft] or [r["model"] for r in continued] == [
        ft,
        "gpt-4o",
    ]
    for r in continued:
        system = LONG if r["model"] == "gpt-4o" else SHORT
        assert r["messages"] == [
            {"role": "system", "content": system},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And in Bergen?"},
        ]
    fake_openai.answers["gpt-4.1"] = lambda req: "It is 19C in Quito."
    relabel = run(db_url, "relabel", "weather", "--model", "gpt-4.1", env=env)
    assert relabel.exit_code == 0 and "1 proposal" in relabel.stdout, relabel.output
    assert run(db_url, "accept", "weather", str(three["id"])).exit_code == 0
    [fixed] = query(db_url, f"SELECT * FROM {TABLE} WHERE id = %s", [three["id"]])
    assert fixed["corrected_response"]["content"] == "It is 19C in Quito." and fixed["included"]
    assert one["api"] == "responses"


def test_migration_0007_on_existing_partitions(empty_db_url: str) -> None:
    """A namespace made before 0007 gets the api column (chat rows by default), its comment,
    the response_id index, and keeps its rows through a downgrade and back."""
    from curation.db import migrate

    migrate.upgrade(empty_db_url, "0006")
    query(empty_db_url, "SELECT curation_create_namespace('weather')")
    query(
        empty_db_url,
        f"INSERT INTO {TABLE} (namespace, user_prompt, response) VALUES ('weather', 'x', '{{}}')",
    )
    migrate.upgrade(empty_db_url)
    [row] = query(empty_db_url, f"SELECT api FROM {TABLE}")
    assert row["api"] == "chat.completions"
    [comment] = query(
        empty_db_url,
        "SELECT col_description(attrelid, attnum) AS c FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attname = 'previous_response_id'",
        [TABLE],
    )
    assert "curation_responses_request" in comment["c"]
    indexes = query(empty_db_url, "SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TABLE])
    assert any("response_id" in i["indexdef"] for i in indexes)
    with pytest.raises(Exception, match="api_check"):
        query(empty_db_url, f"UPDATE {TABLE} SET api = 'completions'")
    assert migrate.downgrade(empty_db_url, "0006") == "0006"
    assert query(empty_db_url, f"SELECT user_prompt FROM {TABLE}") == [{"user_prompt": "x"}]


def test_sql_functions_read_any_recorded_json(db_url: str) -> None:
    """The rebuild and the answer text never fail on odd rows: NULL, or what they can read."""
    query(db_url, "SELECT curation_create_namespace('weather')")
    insert = (
        f"INSERT INTO {TABLE} (namespace, user_prompt, response, request, api, response_id,"
        " previous_response_id) VALUES ('weather', %s, %s, %s, 'responses', %s, %s)"
    )
    loop = [("a", "r1", "r2"), ("b", "r2", "r1")]  # two rows naming each other
    for prompt, rid, prev in loop:
        query(
            db_url,
            insert,
            [
                prompt,
                '{"output": 3}',
                json.dumps({"input": 7, "previous_response_id": prev}),
                rid,
                prev,
            ],
        )
    query(
        db_url,
        insert,
        [
            "c",
            '{"output": [1, {"type": "message", "content": "x"}]}',
            '{"input": "hi"}',
            "r3",
            None,
        ],
    )
    query(
        db_url,
        insert,
        [
            "d",
            "{}",
            json.dumps(
                {"input": [{"role": "user", "content": "more"}], "previous_response_id": "r3"}
            ),
            "r4",
            "r3",
        ],
    )
    rebuilt = {
        r["user_prompt"]: r["r"]
        for r in query(
            db_url,
            f"SELECT user_prompt, curation_responses_request(namespace, request) AS r FROM {TABLE}",
        )
    }
    assert rebuilt["a"] is None and rebuilt["b"] is None  # a loop is not a conversation
    assert rebuilt["d"] == {
        "input": [
            {"role": "user", "content": "hi"},
            1,
            {"type": "message", "content": "x"},
            {"role": "user", "content": "more"},
        ]
    }
    texts = query(
        db_url,
        "SELECT curation_response_text(v::json) AS t FROM unnest(%s::text[]) AS v",
        [
            [
                "[1]",
                "3",
                '{"output": 3}',
                '{"output": [1, {"type": "message", "content": "x"}]}',
                '{"output": [{"type": "message", "content": [{"type": "output_text", "text": "a"}, 2, {"type": "output_text", "text": "b"}]}]}',
                '{"output": [{"type": "function_call", "name": "f", "arguments": "{}"}]}',
                '{"choices": []}',
            ]
        ],
    )
    assert [t["t"] for t in texts] == [
        None,
        None,
        None,
        None,
        "ab",
        '[{"name" : "f", "arguments" : "{}"}]',
        None,
    ]
