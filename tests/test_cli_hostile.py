"""Every command with hostile arguments: a non-zero exit, one line on stderr, no traceback.

One table, one row per (command, hostile input), run against a real database
(and a real unprivileged login). A new command without a row fails
``test_every_command_is_in_the_table``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import conninfo

from curation.cli import main
from curation.cli.review_cmd import EDIT_ATTEMPTS
from tests.factories import add_row
from tests.fake_openai import FakeOpenAI
from tests.pg import ROOT

BIG = "99999999999999999999999"
MODEL = "gpt-4o-mini-2024-07-18"
SECRET = "S3CRETpw"
CASE_SECONDS = 30


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    login: str = "owner"  # owner, unprivileged, or none (the args name a --database-url)
    spawn: bool = False  # its own process: a proxy that wrongly started would never return
    notices: int = 0  # stderr lines allowed before the error (edit: "reopening the editor")


def case(*args: str, **kw: object) -> Case:
    return Case(tuple(args), **kw)  # type: ignore[arg-type]


CASES = [
    case("config", env={"CURATION_LOG_LEVEL": "BOGUS"}),
    case("--log-level", "BOGUS", "config"),
    case("--log-level", "BOGUS", "ns", "list"),
    case("config", env={"CURATION_SPOOL_MAX_BYTES": "lots"}),
    case("db", "upgrade", "zzz"),
    case("db", "downgrade", "zzz"),
    case("--database-url", "not a url", "db", "current", login="none"),
    case(  # its own process: a psql exec'd in-process would replace the test run
        "--database-url",
        f"postgresql://u@h/d?sslpassword={SECRET}",
        "db",
        "psql",
        login="none",
        spawn=True,
    ),
    case("ns", "create", "Bad;Name"),
    case("ns", "list", login="unprivileged"),
    case("--database-url", "not a url", "ns", "list", login="none"),
    case("--database-url", f"http://u:{SECRET}@example.com/x", "ns", "list", login="none"),
    case(
        "--database-url",
        f"postgresql://u@127.0.0.1:1/d?password={SECRET}",
        "ns",
        "list",
        login="none",
    ),
    case("--database-url", f"host=127.0.0.1 port=1 password={SECRET}", "ns", "list", login="none"),
    case("ns", "show", "nosuchns"),
    case("ns", "set", "p"),
    case("ns", "set", "p", "--compare", "  "),
    case("ns", "set", "nosuchns", "--compare", "json"),
    case("ns", "suggest-prompt", "nosuchns"),
    case("ns", "suggest-prompt", "p"),  # no base model and none recorded: say --model
    case("ns", "suggest-prompt", "p", "--model", "{a_file}"),
    case("proxy", "--max-body-bytes", "lots", spawn=True),
    case("--log-level", "BOGUS", "proxy", spawn=True),
    case("proxy", "--workers", "0", spawn=True),
    case("proxy", "--workers", "2", "--listen", "127.0.0.1:0", spawn=True),
    case("proxy", "--background-concurrency", "0", spawn=True),
    case("proxy", "--background-timeout", "forever", spawn=True),
    case("proxy", "--rollout-interval", "-1", spawn=True),
    case("proxy", "--no-rollout-decider", "--rollout-interval", BIG, spawn=True),
    case("web", "--listen", "nowhere", spawn=True),
    case("web", "--listen", "127.0.0.1:99999", spawn=True),
    case("web", "--listen", "192.0.2.1:0", spawn=True),  # an address this machine lacks
    case("web", env={"CURATION_WEB_SESSION_IDLE": "forever"}, spawn=True),
    case("web", env={"CURATION_WEB_LISTEN": "nowhere"}, spawn=True),
    case("web", "--allow-host", "evil.example/<x>", spawn=True),
    case("list", "nosuchns"),
    case("list", "p", login="unprivileged"),
    case("list", "p", "--limit", BIG),
    case("list", "p", "--feedback", "sideways"),
    case("list", "nosuchns", "--feedback", "negative"),
    case("list", "p", "--feedback", "any", login="unprivileged"),
    case("list", "p", "--flag", "sideways"),
    case("list", "p", "--flag", "any", login="unprivileged"),
    case("flags", "nosuchns"),
    case("flags", "Bad;Name", "--backfill"),
    case("flags", "p", "--backfill", login="unprivileged"),
    case("show", "p", BIG),
    case("show", "p", "abc"),
    case("include", "p", BIG),
    case("include", "p", BIG, "--accept-flags"),
    case("exclude", "p", "-5"),
    case("reset", "p"),
    case("edit", "p", "{row}", notices=EDIT_ATTEMPTS - 1),
    case("edit", "p", "{row}", env={"EDITOR": "nosuch-editor-4f1c"}),
    case("edit", "p", "{row}", env={"EDITOR": "false"}),
    case("review", "p"),
    case("review", "p", "--order", "sideways"),
    case("review", "p", "--disagreements"),  # no terminal
    case("list", "p", "--disagreements", login="unprivileged"),
    case("list", "nosuchns", "--disagreements"),
    case("coverage", "nosuchns"),
    case("coverage", "Bad;Name", "--json"),
    case("coverage", "p", "--limit", "0"),
    case("coverage", "p", login="unprivileged"),
    case("coverage", "p", "--embeddings", "m", env={"OPENAI_API_KEY": ""}),
    case("history", "p", "0"),
    case("stats", "nosuchns"),
    case("stats", env={"CURATION_MODELS_FILE": "{models}"}),
    case("purge", "p", "--older-than", "99999999999999d", "--yes"),
    case("purge", "p", "--older-than", "soon", "--yes"),
    case("export", "p", "--out", "{read_only}", "--model", MODEL),
    case("export", "p", "--out", "{tmp}/x", "--model", MODEL, "--pii", "sideways"),
    case("export", "p", "--out", "{tmp}/x", "--model", MODEL, "--pii-region", "Narnia"),
    case("export", "p", "--out", "{a_file}/sub", "--model", MODEL),
    case(
        "export",
        "p",
        "--out",
        "{tmp}/x",
        "--model",
        MODEL,
        env={"CURATION_MODELS_FILE": "{models}"},
    ),
    case("export", "p", "--out", "{tmp}/x", "--ids", "a,b", "--model", MODEL),
    case("export", "p", "--out", "{tmp}/x", "--dedupe", "far", "--model", MODEL),
    case("finetune", "submit", "nosuchns", "--model", MODEL),
    case("finetune", "list", "Bad;Name"),
    case("finetune", "status", BIG),
    case("finetune", "wait", "zzz"),
    case("finetune", "cancel", BIG),
    case("retrain", "nosuchns"),
    case("finetune", "submit", "p", "--model", MODEL, "--backend", "nope"),
    case("retrain", "p", "--model", MODEL, "--backend", "nope"),
    case("retrain", "p", "--model", MODEL),  # no training prompt: refused
    case("retrain", "p", "--model", MODEL, "--no-system-prompt"),  # one row: too few
    case("retrain", "p", "--model", MODEL, "--no-system-prompt", "--pii", "sideways"),
    case("retrain", "p", "--model", MODEL, "--no-system-prompt", "--pii-region", "Narnia"),
    case("finetune", "submit", "p", "--model", MODEL, "--pii", "sideways"),
    case("finetune", "submit", "p", "--model", MODEL, "--pii", "refuse", "--pii-region", "x"),
    case("accept", "p", BIG, "--accept-flags"),
    case("eval", "p", "--model", "x", "--rows", BIG),
    case("eval", "p", "--model", "x", "--rows", "a,b"),
    case("eval", "p", "--model", "x", "--rows", "all-included", "--compare", "/nonexistent/cmd"),
    case("eval", "history", "nosuchns"),
    case("relabel", "p", "--model", "x", "--ids", "a,b"),
    case("accept", "p", BIG),
    case("reject", "p", "abc"),
    case("serve", "nosuchns"),
    case("serve", "p", "--percent", "200"),
    case("serve", "p", "--shadow", "101"),
    case("serve", "p", "--model", MODEL, "--rollout", "manual"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--steps", "50,5"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--steps", BIG),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--steps", "5,,x"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--promote-at", "2"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--min-samples", "0"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--demote-below", "0.99"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--max-error-rate", "-1"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", "--percent", "5"),
    case("serve", "p", "--model", MODEL, "--watch-percent", BIG),
    case("serve", "p", "--steps", "5,100"),
    case("serve", "p", "--per-minute", "0"),
    case("serve", "p", "--history", "--percent", "5"),
    case("serve", "p", "--last", "0"),
    case("serve", "p", "--off", "--rollout", "auto"),
    case("serve", "p", "--model", MODEL, "--rollout", "auto", login="unprivileged"),
    case("serve", "p", "--history", login="unprivileged"),
    case("serve", "nosuchns", "--history"),
    case("student", "start", "zzz", spawn=True),
    case("train-worker", "--poll", "0"),
    case("train-worker", "--once", "--job", BIG),
    case("train-worker", "--once", "--job", "0"),
    case("doctor", login="unprivileged"),
    case("doctor", "--spool-dir", "{a_file}"),
    case("doctor", "--json", "--spool-dir", "{read_only}"),
]


@dataclass
class Ground:
    urls: dict[str, str]
    values: dict[str, str]
    env: dict[str, str]


@pytest.fixture
def unprivileged_url(db_url: str) -> Iterator[str]:
    """A login that may connect but holds no grant on anything of curation's."""
    role = f"hostile_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        yield conninfo.make_conninfo(db_url, user=role)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture
def ground(
    db_url: str,
    unprivileged_url: str,
    conn: psycopg.Connection[dict[str, object]],
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> Ground:
    row = add_row(conn, "p", "where?", '["Paris"]')
    (tmp_path / "models.json").write_text("[1,2]")
    (tmp_path / "a_file").write_text("")
    editor = tmp_path / "editor.py"  # appends a brace: never valid, never unchanged
    editor.write_text("import sys\nopen(sys.argv[1], 'a').write('{')\n")
    values = {
        "row": str(row),
        "models": str(tmp_path / "models.json"),
        "a_file": str(tmp_path / "a_file"),
        "read_only": read_only_dir(tmp_path),
        "tmp": str(tmp_path),
    }
    env = {
        "OPENAI_API_KEY": "sk-hostile-test",
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",  # type: ignore[attr-defined]
        "EDITOR": f"{sys.executable} {editor}",
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }
    return Ground({"owner": db_url, "unprivileged": unprivileged_url}, values, env)


def read_only_dir(tmp_path: Path) -> str:
    """A folder this process cannot write to; root writes anywhere but sysfs."""
    if os.geteuid() == 0:
        return "/sys"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


class TookTooLong(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """A command that never ends fails its row instead of hanging the table."""

    def expire(signum: int, frame: object) -> None:
        raise TookTooLong(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def invoke(c: Case, ground: Ground) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); an uncaught exception is shown as a traceback."""
    args = [a.format(**ground.values) for a in c.args]
    if c.login != "none":
        args = ["--database-url", ground.urls[c.login], *args]
    env = {**ground.env, **{k: v.format(**ground.values) for k, v in c.env.items()}}
    if c.spawn:
        done = subprocess.run(
            [sys.executable, "-m", "curation", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CASE_SECONDS,
        )
        return done.returncode, done.stdout, done.stderr
    with time_limit(CASE_SECONDS):
        result = CliRunner().invoke(main, args, env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, result.stdout, stderr


def test_hostile_arguments_end_in_one_line(ground: Ground) -> None:
    failures = []
    for c in CASES:
        code, out, err = invoke(c, ground)
        lines = err.strip().splitlines()
        problems = [
            "exit 0" if code == 0 else "",
            f"{len(lines)} lines on stderr" if len(lines) != 1 + c.notices else "",
            "a traceback" if "Traceback" in err else "",
            "a secret shown" if SECRET in out + err else "",
        ]
        if any(problems):
            failures.append(f"{' '.join(c.args)}: {', '.join(p for p in problems if p)}\n{err}")
    assert not failures, "\n".join(failures)


def probed(args: tuple[str, ...]) -> str:
    """The command path a case runs: `eval NS ...` is `eval run`."""
    rest = list(args)
    while rest and rest[0] in ("--database-url", "--log-level"):
        rest = rest[2:]
    group: click.Command = main
    path = []
    while isinstance(group, click.Group):
        name = rest.pop(0) if rest and rest[0] in group.commands else "run"
        path.append(name)
        group = group.commands[name]
    return " ".join(path)


def leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[str]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from leaves(sub, (*path, name))
    else:
        yield " ".join(path)


def test_every_command_is_in_the_table() -> None:
    assert set(leaves(main)) - {probed(c.args) for c in CASES} == set()


def test_an_os_error_on_a_named_path_is_one_line() -> None:
    """The guard for paths no boundary names: the file and the reason, no traceback."""

    @click.command("open-missing")
    def open_missing() -> None:
        Path("/nonexistent/curation/file").read_text()

    main.add_command(open_missing)
    try:
        result = CliRunner().invoke(main, ["open-missing"])
    finally:
        main.commands.pop("open-missing")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: /nonexistent/curation/file: No such file or directory; "
        "check the path and its permissions"
    ]


def test_a_bare_group_still_shows_its_help() -> None:
    for args in ([], ["db"], ["finetune"]):
        result = CliRunner().invoke(main, args)
        assert "Commands:" in result.output, args
