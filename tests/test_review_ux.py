"""`curation review` as a curator meets it (issue 11, items 2-4): refused in one line
without a terminal, a bad EDITOR that keeps the session on its row, a line after each
key with a running count, usage the upstream did not report shown as such.

Review runs in its own process on a real terminal (pexpect), as in test_curate.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import psycopg
import pytest

from tests.cli import run, spawn
from tests.factories import add_row
from tests.pg import ROOT

Conn = psycopg.Connection[dict[str, object]]
NS = "locations"
TABLE = f"{NS}_openai_chat_completion"
PROMPT = r"\[q\]uit\? "
REFUSAL = (
    "Error: curation review needs a terminal; in scripts use "
    "curation list NS --pending, then curation include / exclude NS ID..."
)


def pending(conn: Conn, *prompts: str) -> dict[str, int]:
    """Pending rows, the first most seen: review shows them in this order."""
    ids = {}
    for seen, p in enumerate(reversed(prompts), start=1):
        ids[p] = add_row(conn, NS, p, f"answer to {p}", included=False)
        conn.execute(f"UPDATE {TABLE} SET times_seen = %s WHERE id = %s", [seen, ids[p]])
    return ids


def states(conn: Conn) -> dict[str, str]:
    found = conn.execute(
        f"SELECT user_prompt, CASE WHEN included IS NOT NULL THEN 'included'"
        f" WHEN excluded IS NOT NULL THEN 'excluded' ELSE 'pending' END AS state FROM {TABLE}"
    ).fetchall()
    return {str(r["user_prompt"]): str(r["state"]) for r in found}


def review(db_url: str, **env: str) -> Any:
    return spawn(db_url, "review", NS, "--curator", "rev", env=env, timeout=30)


def command(db_url: str) -> list[str]:
    return [sys.executable, "-m", "curation", "--database-url", db_url, "review", NS]


def assert_refused(code: int, stderr: str) -> None:
    assert code == 2, stderr
    assert stderr.strip().splitlines() == [REFUSAL], stderr


# -- item 2: no terminal ------------------------------------------------------


def test_piped_review_is_one_line(db_url: str, conn: Conn) -> None:
    pending(conn, "Paris")
    done = subprocess.run(
        command(db_url), input="i\n", capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert_refused(done.returncode, done.stderr)
    assert done.stdout == ""
    assert states(conn) == {"Paris": "pending"}


def test_review_without_a_controlling_terminal_is_one_line(db_url: str, conn: Conn) -> None:
    """stdin and stdout on a terminal, but a new session without a controlling one (setsid,
    as under cron or a CI runner): /dev/tty cannot be opened, and review says so."""
    pending(conn, "Paris")
    leader, follower = os.openpty()
    try:
        done = subprocess.run(
            command(db_url),
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=30,  # before the fix review waited for a key here
            start_new_session=True,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert_refused(done.returncode, done.stderr)
    assert "Traceback" not in done.stderr


def test_review_with_its_output_redirected_is_one_line(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    """Keys from a terminal, the screen into a file: nobody would see the rows."""
    pending(conn, "Paris")
    shown = tmp_path / "shown.txt"
    line = " ".join(f"'{a}'" for a in command(db_url))
    child = pexpect.spawn(
        "bash", ["-c", f"{line} > {shown}"], cwd=str(ROOT), encoding="utf-8", timeout=30
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2, child.before
    assert [ln for ln in (child.before or "").splitlines() if ln.strip()] == [REFUSAL]
    assert shown.read_text() == ""
    assert states(conn) == {"Paris": "pending"}


# -- item 3: a bad EDITOR -----------------------------------------------------


@pytest.mark.parametrize(
    ("editor", "said"),
    [
        ("nosuch-editor-4f1c", "the editor 'nosuch-editor-4f1c' is not installed"),
        ("false", "the editor 'false' exited with an error"),
    ],
)
def test_a_bad_editor_keeps_the_session_on_its_row(
    db_url: str, conn: Conn, editor: str, said: str
) -> None:
    ids = pending(conn, "Paris", "Lyon")
    child = review(db_url, EDITOR=editor, VISUAL="")
    child.expect("Paris")
    child.expect(PROMPT)
    child.send("c")
    child.expect(f"row {ids['Paris']} not corrected: {said}; nothing stored")
    child.expect(PROMPT)  # the same row, asked again
    child.send("c")  # and again: still alive
    child.expect(f"row {ids['Paris']} not corrected")
    child.expect(PROMPT)
    child.send("i")
    child.expect(f"row {ids['Paris']} included")
    child.expect("Lyon")
    child.expect(PROMPT)
    child.send("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert states(conn) == {"Paris": "included", "Lyon": "pending"}
    corrected = conn.execute(f"SELECT count(corrected_response) AS n FROM {TABLE}").fetchone()
    assert corrected == {"n": 0}


def test_edit_with_a_bad_editor_is_one_line(db_url: str, conn: Conn) -> None:
    row = add_row(conn, NS, "Paris", "answer")
    for editor, said in (("nosuch-editor-4f1c", "is not installed"), ("false", "exited")):
        result = run(db_url, "edit", NS, str(row), env={"EDITOR": editor, "VISUAL": ""})
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert said in line and "nothing stored" in line


# -- item 4: feedback and a running count --------------------------------------


def test_each_key_says_what_it_did_and_counts(db_url: str, conn: Conn, tmp_path: Path) -> None:
    ids = pending(conn, "Paris", "Lyon", "Nice", "Metz", "Brest")
    script = tmp_path / "editor.py"
    script.write_text("import sys\nopen(sys.argv[1], 'w').write('a better answer')\n")
    child = review(db_url, EDITOR=f"{sys.executable} {script}")
    steps = [
        ("i", "Paris", "included", "1 included this session"),
        ("e", "Lyon", "excluded", "1 included, 1 excluded this session"),
        ("c", "Nice", "corrected and included", "1 included, 1 corrected, 1 excluded this session"),
        ("s", "Metz", "skipped", "1 included, 1 corrected, 1 excluded, 1 skipped this session"),
    ]
    for key, prompt, did, tally in steps:
        child.expect(prompt)
        child.expect(PROMPT)
        child.send(key)
        child.expect_exact(f"row {ids[prompt]} {did}; {tally}")
    child.expect("Brest")
    child.expect(PROMPT)
    child.send("u")  # takes back the correction of Nice (Metz was only skipped)
    child.expect_exact(
        f"row {ids['Nice']} is pending again; 1 included, 1 excluded, 1 skipped this session"
    )
    child.expect("Nice")
    child.expect(PROMPT)
    child.send("x")
    child.expect("keys: i include, e exclude")
    child.expect(PROMPT)  # an unknown key: asked again, nothing done
    child.send("q")
    child.expect_exact("1 included, 1 excluded, 1 skipped this session")
    child.expect(pexpect.EOF)
    assert states(conn) == {
        "Paris": "included",
        "Lyon": "excluded",
        "Nice": "pending",
        "Metz": "pending",
        "Brest": "pending",
    }


def test_the_end_of_the_queue_gives_the_tally(db_url: str, conn: Conn) -> None:
    ids = pending(conn, "Paris")
    child = review(db_url)
    child.expect(PROMPT)
    child.send("i")
    child.expect_exact(f"row {ids['Paris']} included; 1 included this session")
    child.expect_exact("nothing left to review; 1 included this session")
    child.expect(pexpect.EOF)


def test_usage_not_reported_says_so(db_url: str, conn: Conn) -> None:
    ids = pending(conn, "streamed", "counted")
    conn.execute(
        f"UPDATE {TABLE} SET prompt_tokens = 120, completion_tokens = 7 WHERE id = %s",
        [ids["counted"]],
    )
    streamed = run(db_url, "show", NS, str(ids["streamed"])).stdout
    assert "tokens not reported" in streamed and "tokens None" not in streamed
    assert "tokens 120 in / 7 out" in run(db_url, "show", NS, str(ids["counted"])).stdout
    child = review(db_url)
    child.expect("streamed")
    child.expect("tokens not reported")
    child.expect(PROMPT)
    child.send("s")
    child.expect("counted")
    child.expect(r"tokens 120 in / 7 out")
    child.expect(PROMPT)
    child.send("q")
    child.expect(pexpect.EOF)


def test_proposals_accepted_and_rejected_say_so(db_url: str, conn: Conn) -> None:
    ids = pending(conn, "Paris", "Lyon", "Nice")
    for p in ("Paris", "Lyon"):
        conn.execute(
            f"UPDATE {TABLE} SET proposed_response = %s, proposed_by = 'teacher' WHERE id = %s",
            ['{"role": "assistant", "content": "teacher says ' + p + '"}', ids[p]],
        )
    child = review(db_url)
    child.expect("teacher says Paris")
    child.expect(PROMPT)
    child.send("a")
    child.expect_exact(
        f"row {ids['Paris']} included with the proposal accepted as its correction;"
        " 1 accepted this session"
    )
    child.expect("teacher says Lyon")
    child.expect(PROMPT)
    child.send("r")
    child.expect_exact(
        f"row {ids['Lyon']}: proposal rejected, the row stays pending;"
        " 1 accepted, 1 rejected this session"
    )
    child.expect("Lyon")  # still pending, now without a proposal
    child.expect(PROMPT)
    child.send("a")
    child.expect_exact(f"row {ids['Lyon']} has no proposal to accept")
    child.expect(PROMPT)
    child.send("q")
    child.expect(pexpect.EOF)
    assert states(conn) == {"Paris": "included", "Lyon": "pending", "Nice": "pending"}
    corrected = conn.execute(
        f"SELECT corrected_response->>'content' AS c FROM {TABLE} WHERE id = %s", [ids["Paris"]]
    ).fetchone()
    assert corrected == {"c": "teacher says Paris"}
