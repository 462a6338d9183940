"""The curator web page in a real headless Chromium (issue 15): sign-in, the keyboard,
corrections, hostile prompts, the database's grants, two curators, and the README's
screenshots (written only when CURATION_SCREENSHOTS names a folder)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests import browser
from tests.browser import Page, WebServer
from tests.conftest import LOGIN_PASSWORD
from tests.factories import add_row
from tests.harness import query
from tests.web_demo import CITIES, demo_namespace

pytestmark = pytest.mark.slow

Conn = psycopg.Connection[dict[str, Any]]
TABLE = "locations_openai_chat_completion"
PASSWORD = LOGIN_PASSWORD  # make_login (conftest) gives its logins this password
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'


if (reason := browser.missing()) and not browser.required():
    browser.unavailable(reason)  # one line for the whole module


@pytest.fixture(scope="module")
def start_browser() -> Iterator[Callable[[], Any]]:
    """Browsers for this module, started on first use (one is shared by the tests)."""
    if reason := browser.missing():
        browser.unavailable(reason)
    paths = browser.executables()
    assert paths is not None
    with browser.drivers(paths) as start:
        yield start


@pytest.fixture(scope="module")
def chrome(start_browser: Callable[[], Any]) -> Any:
    return start_browser()


@pytest.fixture
def web(db_url: str, tmp_path: Path, make_login: Callable[..., str]) -> Iterator[WebServer]:
    """``curation web`` on a free port against this test's database (stopped before the
    test's logins are dropped)."""
    server = WebServer(db_url, tmp_path / "web.log").start()
    yield server
    server.stop()


@pytest.fixture
def page(chrome: Any, web: WebServer) -> Page:
    browser.reset(chrome)
    return Page(chrome, web)


def row(db_url: str, row_id: int) -> dict[str, Any]:
    [found] = query(
        db_url,
        f"SELECT included, excluded, corrected_response::text AS corrected FROM {TABLE}"
        " WHERE id = %s",
        [row_id],
    )
    return found


def audit(db_url: str, row_id: int) -> list[tuple[str, str]]:
    return [
        (a["column_name"], a["login"])
        for a in query(
            db_url,
            "SELECT column_name, login FROM curation_audit WHERE row_id = %s ORDER BY id",
            [row_id],
        )
    ]


def pending(conn: Conn, *prompts: str) -> list[int]:
    return [add_row(conn, "locations", p, '["Lyon"]', included=False) for p in prompts]


def csp_and_script_errors(page: Page) -> list[dict[str, Any]]:
    """Console entries that mean a script was blocked or broke (the network's 404s aside)."""
    return [
        e
        for e in page.console()
        if e.get("source") == "security"
        or (e.get("level") == "SEVERE" and e.get("source") != "network")
    ]


def test_sign_in_with_the_token_and_with_a_postgresql_login(
    page: Page, conn: Conn, make_login: Callable[..., str]
) -> None:
    pending(conn, "I live in Lyon")
    page.open("/")
    page.wait("form#login")  # not signed in: the login form, not the data
    assert not page.all("table#namespaces")
    page.open("/?token=wrong")
    assert page.wait("#error", visible=True).text.strip()
    page.open("/")
    page.wait("form#login")

    page.sign_in_with_token()
    assert page.driver.current_url == page.server.base + "/"  # the token leaves the address bar
    assert page.all("tr[data-namespace=locations]")

    browser.reset(page.driver)
    page.sign_in("nobody_" + uuid.uuid4().hex[:8], PASSWORD)
    assert page.wait("#error", visible=True).text.strip()
    assert not page.all("table#namespaces")

    ana = make_login()
    page.sign_in(ana, PASSWORD)
    page.wait("tr[data-namespace=locations]")
    assert csp_and_script_errors(page) == []


def test_include_with_the_keyboard_is_audited_under_the_login(
    page: Page, db_url: str, conn: Conn, make_login: Callable[..., str]
) -> None:
    first, second = pending(conn, "I grew up in Lyon", "Flights to Rome")
    conn.execute(f"UPDATE {TABLE} SET times_seen = 5 WHERE id = %s", [first])  # most seen first
    ana = make_login()
    page.sign_in(ana, PASSWORD).wait("table#namespaces")
    page.open("/ns/locations/next")
    assert page.row_id() == first
    assert page.wait("#row").get_attribute("data-state") == "pending"

    page.press("i")
    page.until(lambda: row(db_url, first)["included"], "the row included in the database")
    assert audit(db_url, first) == [("included", ana)]
    page.until(lambda: current_row(page) == second, "the page to move to the next pending row")
    assert "included" in page.one("#status").text
    assert row(db_url, second) == {"included": None, "excluded": None, "corrected": None}
    page.press("u")  # on the next row: undo the last decision, as `review` does
    page.until(lambda: not row(db_url, first)["included"], "the decision undone")
    page.until(lambda: current_row(page) == first, "back on the undone row")
    assert audit(db_url, first) == [("included", ana), ("included", ana)]
    assert csp_and_script_errors(page) == []


def current_row(page: Page) -> int | None:
    """The row page's id, or None mid-navigation."""
    try:
        found = page.all("#row[data-row-id]")
        return int(found[0].get_attribute("data-row-id")) if found else None
    except Exception:  # a stale element while the next page loads
        return None


def test_a_json_correction_is_checked_in_the_page_and_saved_in_the_originals_style(
    page: Page, db_url: str, conn: Conn
) -> None:
    original = '{"cities":["Lyon","Berlin"]}'  # compact: the model learns this style
    target = add_row(conn, "locations", "Lyon, then Berlin", original, included=False)
    page.sign_in_with_token()
    page.open(f"/ns/locations/rows/{target}")
    page.wait(".message[data-role=assistant]")
    page.press("c")  # opens the editor
    editor = page.wait("textarea#correction", visible=True)

    editor.clear()
    editor.send_keys('{"cities": ["Lyon",')
    page.one("button#save-correction").click()
    assert page.wait("#correction-error", visible=True).text.strip()
    assert row(db_url, target)["corrected"] is None  # refused in the page: nothing sent
    assert audit(db_url, target) == []

    editor = page.one("textarea#correction")
    editor.clear()
    editor.send_keys('{\n  "cities": ["Lyon", "Paris"]\n}')  # typed: keys here are not actions
    page.one("button#save-correction").click()
    saved = page.until(lambda: row(db_url, target)["corrected"], "the correction saved")
    assert json.loads(saved) == {"role": "assistant", "content": '{"cities":["Lyon","Paris"]}'}
    assert sorted(column for column, _ in audit(db_url, target)) == [
        "corrected_response",
        "included",  # the button says so: "save the correction and include"
    ]
    assert csp_and_script_errors(page) == []


def test_hostile_prompts_render_as_text_and_run_nothing(
    page: Page, db_url: str, conn: Conn
) -> None:
    hostile = add_row(conn, "locations", PAYLOAD, PAYLOAD, included=False, tags={"team": PAYLOAD})
    page.sign_in_with_token()
    page.console()
    quoted = '"><script>window.__pwned=1</script>'
    for path in (
        "/",
        "/ns/locations/rows?state=pending",
        f"/ns/locations/rows?q={quoted}",
        f"/ns/locations/rows/{hostile}",
    ):
        page.open(path)
        page.wait("table#namespaces, table#rows, #row")
        assert page.driver.execute_script("return window.__pwned") is None, path
        assert (
            page.driver.execute_script(
                "return document.querySelectorAll('[onerror], img[src=x]').length"
            )
            == 0
        ), path
        assert csp_and_script_errors(page) == [], path
    body = page.one("body").text
    assert "<script>window.__pwned=1</script>" in body
    assert '<img src=x onerror="window.__pwned=1">' in body
    assert row(db_url, hostile)["included"] is None


def test_a_curator_cannot_do_in_the_page_what_psql_refuses(
    page: Page, db_url: str, conn: Conn, make_login: Callable[..., str]
) -> None:
    [target] = pending(conn, "I grew up in Lyon")
    ana = make_login()
    for table in ("openai_chat_completion", TABLE):
        conn.execute(f"REVOKE UPDATE (included) ON {table} FROM curation_curator")
    as_ana = make_conninfo(**{**conninfo_to_dict(db_url), "user": ana})  # type: ignore[arg-type]
    with (
        psycopg.connect(as_ana, autocommit=True) as c,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        c.execute(f"UPDATE {TABLE} SET included = now() WHERE id = %s", [target])

    page.sign_in(ana, PASSWORD).wait("table#namespaces")
    page.open(f"/ns/locations/rows/{target}")
    assert page.row_id() == target
    page.press("i")
    message = page.until(
        lambda: next((e.text.strip() for e in page.all("#error") if e.text.strip()), ""),
        "an error on the page",
    )
    assert "\n" not in message and "permission" in message.lower(), message
    # refused: back on the row page (a GET, POST-redirect-GET), the row and its keys still there
    assert page.driver.current_url == f"{page.server.base}/ns/locations/rows/{target}"
    assert page.row_id() == target and page.all("button[data-action=include]")
    page.driver.refresh()  # a reload sends nothing again, and the line was said once
    assert page.row_id() == target and not page.all("#error")
    assert row(db_url, target) == {"included": None, "excluded": None, "corrected": None}
    assert audit(db_url, target) == []

    # a login without curation_curator reads nothing: one line saying so, on every page
    browser.reset(page.driver)
    page.sign_in(make_login("eve", curator=False), PASSWORD)
    for path in ("/ns/locations/rows", f"/ns/locations/rows/{target}", "/ns/locations/next"):
        page.open(path)
        refusal = page.wait("#error", visible=True).text.strip()
        assert "\n" not in refusal and "permission" in refusal.lower(), (path, refusal)
        assert not page.all("tr[data-row-id], #row"), path
        assert "I grew up in Lyon" not in page.one("body").text, path


def test_exclude_undo_and_move_with_keys_a_forged_post_and_sign_out(
    page: Page, db_url: str, conn: Conn
) -> None:
    first, second, third = pending(conn, "I grew up in Lyon", "Flights to Rome", "Weather in Oslo")
    page.sign_in_with_token()
    page.open(f"/ns/locations/rows/{first}")
    assert page.row_id() == first
    page.press("e")
    page.until(lambda: row(db_url, first)["excluded"], "the row excluded")
    page.until(lambda: current_row(page) not in (None, first), "the next pending row")
    page.open(f"/ns/locations/rows/{first}")
    page.wait("#row[data-state=excluded]")
    page.press("u")
    page.until(lambda: not row(db_url, first)["excluded"], "the decision undone")
    page.open(f"/ns/locations/rows/{second}")
    assert page.row_id() == second
    page.press("j")
    page.until(lambda: current_row(page) not in (None, second), "j: another row")
    page.press("s")
    page.until(lambda: current_row(page) is not None, "s: a pending row")

    # the session cookie alone is not enough: a POST without the form's token changes nothing
    status = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/ns/locations/rows/{third}/include', {{method: 'POST', redirect: 'manual',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf=forged'})"
        ".then(r => done(r.status), e => done(String(e)));"
    )
    assert status == 403, status
    assert row(db_url, third) == {"included": None, "excluded": None, "corrected": None}

    page.one("#logout").click()
    page.wait("form#login")
    page.open(f"/ns/locations/rows/{third}")
    page.wait("form#login")
    assert not page.all("#row")
    assert csp_and_script_errors(page) == []


def test_two_curators_get_different_next_pending_rows(
    page: Page,
    start_browser: Callable[[], Any],
    web: WebServer,
    db_url: str,
    conn: Conn,
    make_login: Callable[..., str],
) -> None:
    rows = pending(conn, "I grew up in Lyon", "Flights to Rome", "Weather in Oslo")
    ana, bob = make_login("ana"), make_login("bob")
    other = Page(start_browser(), web)
    page.sign_in(ana, PASSWORD).wait("table#namespaces")
    other.sign_in(bob, PASSWORD).wait("table#namespaces")
    page.open("/ns/locations/next")
    other.open("/ns/locations/next")
    seen = {page.row_id(), other.row_id()}
    assert len(seen) == 2 and seen <= set(rows)
    for r in seen:  # looking is not deciding
        assert row(db_url, r) == {"included": None, "excluded": None, "corrected": None}
    other.driver.quit()


def test_the_three_pages_with_demo_data(page: Page, db_url: str, conn: Conn) -> None:
    """What the README shows; also the rows page's filters and counts against the database."""
    ids = demo_namespace(conn)
    page.sign_in_with_token()
    page.wait("tr[data-namespace=locations]")
    assert page.all("tr[data-namespace=support]")
    assert page.all("form.prompt-form textarea[name=prompt]")
    assert not page.one("#status").is_displayed()  # nothing to say: no blank band
    for width in (1440, 1024):  # the training prompt has room to be read and edited
        page.driver.set_window_size(width, 900)
        shown = page.one("tr[data-prompt-of=locations] textarea").size["width"]
        assert shown >= 0.6 * width, (width, shown)
        assert "JSON array of names" in page.one(
            "tr[data-prompt-of=locations] textarea"
        ).get_attribute("value")
    page.screenshot("namespaces")

    page.open("/ns/locations/rows?state=pending")
    page.wait("table#rows")
    waiting = query(
        db_url, f"SELECT id FROM {TABLE} WHERE included IS NULL AND excluded IS NULL ORDER BY id"
    )
    assert str(len(waiting)) in page.one("#count").text
    shown = {int(r.get_attribute("data-row-id")) for r in page.all("tr[data-row-id]")}
    assert shown <= {r["id"] for r in waiting} and shown
    marker = page.one(f"tr[data-row-id='{ids['flagged']}'] .flag")
    assert "truncated" in marker.text and "truncated:" in marker.get_attribute("title")
    page.screenshot("rows")

    page.open("/ns/locations/rows?q=lyon")
    page.wait("table#rows")
    lyon = {int(r.get_attribute("data-row-id")) for r in page.all("tr[data-row-id]")}
    assert lyon == {ids[CITIES[0][0]]}

    page.open(f"/ns/locations/rows/{ids[CITIES[0][0]]}")
    page.wait(".message[data-role=assistant]")
    assert page.all("#audit") and page.all("button[data-action=include]")
    page.screenshot("row")

    page.open(f"/ns/locations/rows/{ids['tool']}")
    page.wait(".message[data-role=assistant]")
    assert "geocode" in page.one("#row").text
    page.screenshot("row-tool-call")

    page.open(f"/ns/locations/rows/{ids['flagged']}")
    assert "truncated" in page.wait("#flags", visible=True).text
    page.screenshot("row-flagged")
    assert csp_and_script_errors(page) == []

    more = {add_row(conn, "support", f"Ticket {n}", "On it.", included=False) for n in range(60)}
    page.open("/ns/support/rows?state=pending")
    seen: list[int] = []
    for _ in range(5):  # keyset pages until the last: every row once, none twice
        page.wait("table#rows")
        seen += [int(r.get_attribute("data-row-id")) for r in page.all("tr[data-row-id]")]
        if not page.all("a#next"):
            break
        page.driver.get(page.one("a#next").get_attribute("href"))
    assert len(seen) == len(set(seen)) == 63 and more <= set(seen)
