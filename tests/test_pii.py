"""Personal data in exports: each kind found, near misses left alone, report, redact
(consistent placeholders, JSON answers still valid, no original value written) and refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import example as case
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.errors import PII_REFUSED
from curation.export import pii, pii_detect
from tests.cli import run, run_json
from tests.factories import add_row
from tests.fake_openai import FakeOpenAI

Conn = psycopg.Connection[dict[str, object]]
EMAIL = "jane.roe@example.org"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
IBAN = "GB82 WEST 1234 5698 7654 32"
IP = "81.2.69.160"
KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"

FOUND = [
    ("email", f"write to {EMAIL}."),
    ("phone", f"call {PHONE} today"),
    ("phone", "call (212) 555-0134 today"),
    ("card", f"card {CARD}, exp 12/29"),
    ("card", "amex 3782-822463-10005"),
    ("iban", f"pay to {IBAN}"),
    ("iban", "DE89370400440532013000"),
    ("ip", f"from {IP}"),
    ("ip", "from 93.184.216.34"),
    ("ip", "see http://93.184.216.34/status"),
    ("ip", "via 2a00:1450:4001:82b::200e"),
    ("secret", f"OPENAI_API_KEY={KEY}"),
    ("secret", "ghp_" + "x1" * 18),
    ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "xoxb-123456789012-abcdefABCDEF"),
    ("secret", "Authorization: Bearer abcDEF123456ghiJKL789mno"),
    ("secret", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
]  # fmt: skip
NEAR_MISSES = [
    "order 4111 1111 1111 1112 shipped",  # 16 digits failing Luhn
    "order number 1234567812345678",  # 16 digits failing Luhn
    "ssh user@host and run it",  # no TLD
    "@decorator\ndef f(): pass",
    "logo@2x.png",  # a file name
    "release 1.2.3.4 is out",  # a version, not an address
    "kernel version 5.15.0.91 ships",
    "tagged v2.10.3.1 today",
    "Server: nginx/1.25.3.1",
    "libfoo-1.25.3.1.tar",
    "listen on 10.0.0.1 or 127.0.0.1",  # private and loopback
    "id 123e4567-e89b-12d3-a456-426614174000",  # a random UUID
    "ISBN 978-3-16-148410-0",
    "ISBN 0-306-40615-2",
    "account 2125550134 was closed",  # a bare run of digits
    "at 12:30:45 on 2024-01-15",
    "std::vector<int> v;",
    "GB82 WEST 1234 5698 7654 33",  # IBAN with a wrong check
    "sk-learn and sk-this-is-not-a-key-at-all",
]


@pytest.mark.parametrize(("kind", "text"), FOUND)
def test_each_kind_is_found(kind: str, text: str) -> None:
    assert [f.kind for f in pii.find(text)] == [kind]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_personal_data(text: str) -> None:
    assert pii.find(text) == ()


def test_the_region_reads_local_numbers() -> None:
    assert pii.find("ruf 030 12345678 an", "DE")[0].kind == "phone"
    assert pii.find("call (212) 555-0134", None) == ()  # only + numbers without a region


def test_masks_never_show_a_whole_value() -> None:
    for kind, text in FOUND:
        for f in pii.find(text):
            assert f.value not in pii.mask(f), kind


def example() -> dict[str, Any]:
    answer = {"to": EMAIL, "card": 4111111111111111, "note": f"call {PHONE}"}
    return {
        "messages": [
            {"role": "system", "content": f"Support for {EMAIL.upper()}"},
            {"role": "user", "content": f"Mail {EMAIL} and {EMAIL}, call {PHONE}"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "send", "arguments": json.dumps({"to": EMAIL})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sent to +44 (0)20 7946 0958"},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def test_redact_is_consistent_and_keeps_json_valid() -> None:
    redacted, found = pii.scan(example(), redact=True)
    messages = redacted["messages"]
    assert messages[0]["content"] == "Support for <EMAIL_1>"
    assert messages[1]["content"] == "Mail <EMAIL_1> and <EMAIL_1>, call <PHONE_1>"
    assert json.loads(messages[2]["tool_calls"][0]["function"]["arguments"]) == {"to": "<EMAIL_1>"}
    assert json.loads(messages[4]["content"]) == {
        "to": "<EMAIL_1>",
        "card": "<CARD_1>",
        "note": "call <PHONE_1>",
    }
    assert found.counts["email"] == 5 and found.counts["card"] == 1
    written = json.dumps(redacted)
    for value in (EMAIL, EMAIL.upper(), PHONE, "4111111111111111", "7946"):
        assert value not in written


def test_report_leaves_the_example_as_it_was() -> None:
    original = example()
    kept, found = pii.scan(original, redact=False)
    assert kept == example() and found.counts["email"] == 5


def test_keys_named_id_type_or_name_inside_json_are_data() -> None:
    answer = json.dumps({"id": "jane@example.com", "type": CARD})
    arguments = json.dumps({"name": "jane.doe@example.com", "id": PHONE})
    tool = {
        "type": "function",
        "function": {
            "name": "send",
            "description": f"mails {EMAIL}",
            "parameters": {"properties": {"to": {"enum": [EMAIL], "default": KEY}}},
        },
    }
    ex = {
        "messages": [
            {"role": "assistant", "content": answer},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "send", "arguments": arguments}}
                ],
            },
        ],
        "tools": [tool],
    }  # fmt: skip
    kept, found = pii.scan(ex, redact=False)
    assert kept == ex
    assert dict(found.counts) == {"email": 4, "card": 1, "phone": 1, "secret": 1}
    redacted, found = pii.scan(ex, redact=True)
    assert json.loads(redacted["messages"][0]["content"]) == {"id": "<EMAIL_1>", "type": "<CARD_1>"}
    args = redacted["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(args) == {"name": "<EMAIL_2>", "id": "<PHONE_1>"}
    written = json.dumps(redacted)
    for value in ("jane@example.com", "jane.doe@example.com", EMAIL, KEY, "4111", "7946"):
        assert value not in written
    assert redacted["messages"][1]["tool_calls"][0]["id"] == "call_1"  # the structure's own
    assert redacted["tools"][0]["function"]["name"] == "send"


STRINGS = st.text(
    alphabet=st.sampled_from("ab1@.:- +4\n{}\"'0sk_-AKIZ"), max_size=60
) | st.sampled_from([t for _, t in FOUND] + NEAR_MISSES)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | STRINGS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_scan_is_total_and_redaction_keeps_strings_strings(value: Any) -> None:
    redacted, _found = pii.scan({"messages": [{"role": "user", "content": value}]}, redact=True)
    json.dumps(redacted)


# -- export ------------------------------------------------------------------


def rows(conn: Conn) -> None:
    add_row(conn, "locations", f"Where does {EMAIL} live? Card {CARD}", f"Near {IP}")
    add_row(conn, "locations", "Order 1234567812345678: where is it?", "In Oslo.")
    add_row(conn, "locations", "Key?", json.dumps({"key": KEY, "mail": EMAIL}))


def export(db_url: str, out: Path, *args: str) -> Any:
    return run(db_url, "export", "locations", "--out", str(out), "--model", "gpt-4o-mini", *args)


def test_export_reports_by_default_with_masked_values(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    rows(conn)
    result = export(db_url, tmp_path)
    assert result.exit_code == 0, result.output
    assert "pii (report): found email 2, card 1, ip 1, secret 1 in 2 rows" in result.stdout
    assert EMAIL not in result.output and KEY not in result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["pii"]["mode"] == "report" and manifest["pii"]["rows"] == 2
    assert [r["id"] for r in manifest["pii"]["listed"]] == [1, 3]
    assert EMAIL not in json.dumps(manifest["pii"])


def test_export_redact_writes_none_of_the_values(db_url: str, conn: Conn, tmp_path: Path) -> None:
    rows(conn)
    found = run_json(
        db_url, "export", "locations", "--out", str(tmp_path), "--model", "gpt-4o-mini",
        "--pii", "redact",
    )  # fmt: skip
    assert found["pii"]["counts"] == {"email": 2, "card": 1, "ip": 1, "secret": 1}
    written = "".join(p.read_text() for p in tmp_path.iterdir())
    for value in (EMAIL, CARD, IP, KEY, "4111"):
        assert value not in written
    examples = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    answers = {e["messages"][-1]["content"] for e in examples}
    assert json.dumps({"key": "<SECRET_1>", "mail": "<EMAIL_1>"}, separators=(",", ":")) in answers
    assert "Order 1234567812345678: where is it?" in written  # a near miss stays


def test_export_refuse_writes_nothing(db_url: str, conn: Conn, tmp_path: Path) -> None:
    rows(conn)
    out = tmp_path / "out"
    result = export(db_url, out, "--pii", "refuse")
    assert result.exit_code == PII_REFUSED
    [line] = result.stderr.strip().splitlines()
    assert "personal data in 2 rows" in line and "--pii redact" in line
    assert EMAIL not in result.output
    assert not out.exists() or not any(out.iterdir())
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM dataset").fetchone() == (0,)


def test_export_refuse_passes_clean_rows(db_url: str, conn: Conn, tmp_path: Path) -> None:
    add_row(conn, "locations", "Order 1234567812345678: where is it?", "In Oslo.")
    result = export(db_url, tmp_path, "--pii", "refuse")
    assert result.exit_code == 0, result.output
    assert "pii (refuse): none found" in result.stdout


def jobs_env(fake_openai: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-pii",
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }


def training_rows(conn: Conn) -> None:
    """Twelve rows, enough to submit; one carries an address and a key."""
    for i in range(11):
        add_row(conn, "locations", f"I was born in town {i}", f'["town {i}"]')
    add_row(conn, "locations", f"Mail {EMAIL} the key {KEY}", '["nowhere"]')
    conn.execute("UPDATE namespace SET training_system_prompt = 'List the places.'")


def test_retrain_pii_refuse_is_its_own_exit_code(
    db_url: str, conn: Conn, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """cron tells a refusal (14) from a failure: one line, nothing uploaded or recorded."""
    training_rows(conn)
    env = jobs_env(fake_openai, tmp_path)
    args = ("retrain", "locations", "--model", "gpt-4o-mini-2024-07-18", "--pii", "refuse")
    result = run(db_url, *args, env=env)
    assert result.exit_code == PII_REFUSED == 14, result.output
    [line] = result.stderr.strip().splitlines()
    assert "personal data in 1 rows" in line and EMAIL not in line
    assert fake_openai.files == {} and fake_openai.jobs == {}
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM dataset").fetchone() == (0,)
    assert run(db_url, *args[:-2], env=env).exit_code == 0  # report, the default, submits


@pytest.mark.parametrize("command", [("finetune", "submit"), ("retrain",)])
def test_submit_and_retrain_redact_upload_no_value(
    db_url: str, conn: Conn, tmp_path: Path, fake_openai: FakeOpenAI, command: tuple[str, ...]
) -> None:
    training_rows(conn)
    env = jobs_env(fake_openai, tmp_path)
    model = "gpt-4o-mini-2024-07-18"
    result = run(db_url, *command, "locations", "--model", model, "--pii", "redact", env=env)
    assert result.exit_code == 0, result.output
    uploaded = b"".join(f["_content"] for f in fake_openai.files.values())
    assert b"<EMAIL_1>" in uploaded and b"<SECRET_1>" in uploaded
    assert EMAIL.encode() not in uploaded and KEY.encode() not in uploaded
    assert len(fake_openai.jobs) == 1


# -- the pre-check and the report's walk: faster, never different -------------

FRAGMENTS = [
    *(t for _, t in FOUND), *NEAR_MISSES, EMAIL, "a@b.co", "@", "\\u0040", "\\", '"', "{", "[",
    "sk-", "k_live_", "ghp_", "github_pat_", "AKIA", "ASIA", "AIza", "xox", "eyJ", "Bearer ",
    "2a00:", "::", ":", "81.2.", ".", "-", "/", "(", ")", " ", "\n", "GB", "DE89", "٣", "\uff15",
]  # fmt: skip
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + i) for i in range(10)))
TEXTS = st.lists(
    st.sampled_from(FRAGMENTS) | st.text(alphabet="0123456789 .-/()@:aAZBJkx_\\", max_size=8),
    max_size=8,
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(TEXTS, st.sampled_from(["US", "DE", None]))
@case("call +44 20 7946 0958 today".translate(FULLWIDTH), "US")  # \d: any digit, not [0-9]
@case("call +٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨", "US")
@case("MT84MALT011000012345MTLCAST001S", None)
def test_the_pre_check_never_hides_a_finding(text: str, region: str | None) -> None:
    if not pii_detect.maybe(text):
        assert pii_detect.find_all(text, region) == ()
    assert pii.find(text, region) == pii_detect.find_all(text, region)


def test_the_pre_check_passes_over_plain_text() -> None:
    assert not pii_detect.maybe("I was born in town number 5321, then moved to city 436")
    assert not pii_detect.maybe('["town number 5321", "city 436"]')
    assert all(pii_detect.maybe(text) for _, text in FOUND)


def full_scan(example: Any, *, redact: bool) -> tuple[Any, pii.Redactor]:
    """The scan without its shortcuts: every string through every gated detector, every
    JSON string parsed, every structure rebuilt (the walk redact mode takes)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pii, "find", pii_detect.find_all)
        m.setattr(pii, "maybe", lambda text: True)
        r = pii.Redactor(redact=True)
        walked = r.walk(example)
    return (walked if redact else example), r


CONTENT = (
    STRINGS
    | JSON.map(json.dumps)
    | JSON.map(lambda v: json.dumps(v).replace("@", "\\u0040"))  # escapes hide an '@'
    | JSON.map(lambda v: json.dumps(v, ensure_ascii=False))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "tool"]), CONTENT), max_size=4), JSON, JSON)
def test_report_and_redact_find_what_the_full_scan_finds(
    turns: list[tuple[str, str]], arguments: Any, tools: Any
) -> None:
    example = {
        "messages": [
            *({"role": role, "content": content} for role, content in turns),
            {
                "role": "assistant",
                "tool_calls": [{"id": "x", "function": {"arguments": arguments}}],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": tools}}],
    }
    for redact in (False, True):
        expected, full = full_scan(example, redact=redact)
        out, found = pii.scan(example, redact=redact)
        assert (out, found.counts, found.masked) == (expected, full.counts, full.masked)
