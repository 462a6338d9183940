"""Coverage through the real CLI on a real database: clusters of generated traffic,
the covered share, review --order coverage, the near-duplicate warning, export
--dedupe near, incremental assignment."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from curation.coverage import signatures
from curation.curate import coverage
from tests import pg
from tests.cli import run, run_json, spawn
from tests.factories import add_row
from tests.traffic import TEMPLATES, prompt, traffic

Conn = psycopg.Connection[dict[str, object]]
NS = "cov"
TABLE = f"{NS}_openai_chat_completion"
GROUPS = 6
PROMPT = r"\[q\]uit\? "
MODEL = "gpt-4o-mini-2024-07-18"


def fill(conn: Conn, n: int = 150, seed: int = 16, groups: int = GROUPS) -> dict[int, int]:
    """Pending rows of generated traffic, each seen 1-5 times: row id -> template."""
    rng = random.Random(seed)
    truth = {}
    for template, text in traffic(n, seed, groups):
        row = add_row(conn, NS, text, included=False)
        conn.execute(f"UPDATE {TABLE} SET times_seen = %s WHERE id = %s", [rng.randint(1, 5), row])
        truth[row] = template
    return truth


def clusters(conn: Conn) -> dict[int, int]:
    """Row id -> cluster id, as psql users see it (the coverage_by_row view)."""
    found = conn.execute(
        "SELECT row_id, cluster_id FROM coverage_by_row WHERE namespace = %s", [NS]
    )
    return {int(r["row_id"]): int(r["cluster_id"]) for r in found}  # type: ignore[call-overload]


def seen(conn: Conn) -> dict[int, int]:
    return {
        int(r["id"]): int(r["times_seen"])  # type: ignore[call-overload]
        for r in conn.execute(f"SELECT id, times_seen FROM {TABLE}")
    }


@pytest.fixture
def conn_ac(db_url: str) -> Any:
    with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as c:
        yield c


def test_coverage_shows_the_true_groups(db_url: str, conn_ac: Conn) -> None:
    truth = fill(conn_ac)
    report = run_json(db_url, "coverage", NS)
    assert set(report) == {"clusters", "covered_share"}
    assert report["covered_share"] == 0
    for c in report["clusters"]:
        assert {"id", "size", "traffic", "included", "example"} <= set(c)
    assigned = clusters(conn_ac)
    assert assigned.keys() == truth.keys()
    by_cluster: dict[int, set[int]] = {}
    for row, cluster in assigned.items():
        by_cluster.setdefault(cluster, set()).add(truth[row])
    assert all(len(templates) == 1 for templates in by_cluster.values())  # pure
    assert len(by_cluster) == GROUPS  # and complete: one cluster per template
    traffic_ = [c["traffic"] for c in report["clusters"]]
    assert traffic_ == sorted(traffic_, reverse=True)
    times = seen(conn_ac)
    for c in report["clusters"]:
        members = [r for r, k in assigned.items() if k == c["id"]]
        assert c["size"] == len(members)
        assert c["traffic"] == sum(times[r] for r in members)
    text = run(db_url, "coverage", NS)
    assert text.exit_code == 0
    assert "covered_share 0.000" in text.stdout
    assert "0 rows assigned now" in text.stdout  # the second run had nothing new


def test_covered_share_is_exact_for_the_included_rows(db_url: str, conn_ac: Conn) -> None:
    truth = fill(conn_ac)
    run_json(db_url, "coverage", NS)
    chosen = {0: None, 3: None}
    for row, template in sorted(truth.items()):
        if template in chosen and chosen[template] is None:
            chosen[template] = row
    excluded = next(r for r, t in sorted(truth.items()) if t == 1)
    assert run(db_url, "include", NS, *[str(r) for r in chosen.values()]).exit_code == 0
    assert run(db_url, "exclude", NS, str(excluded)).exit_code == 0  # excluded covers nothing
    times = seen(conn_ac)
    covered = sum(times[r] for r, t in truth.items() if t in chosen)
    report = run_json(db_url, "coverage", NS)
    assert report["covered_share"] == pytest.approx(covered / sum(times.values()), abs=1e-6)
    assert sorted(c["included"] for c in report["clusters"]) == [0] * (GROUPS - 2) + [1, 1]


def test_review_by_coverage_covers_every_group_after_one_row_each(
    db_url: str, conn_ac: Conn
) -> None:
    truth = fill(conn_ac)  # review assigns them itself: no coverage run first
    child = spawn(db_url, "review", NS, "--order", "coverage", "--curator", "rev", timeout=60)
    shown = []
    for _ in range(GROUPS):
        child.expect(r"#(\d+)")
        shown.append(int(child.match.group(1)))
        child.expect(PROMPT)
        child.send("i")
        child.expect("included")
    child.expect(r"#(\d+)")
    after = int(child.match.group(1))
    child.expect(PROMPT)
    child.send("q")
    child.expect(pexpect.EOF)
    assert sorted(truth[r] for r in shown) == list(range(GROUPS))  # one row per group
    report = run_json(db_url, "coverage", NS)
    assert report["covered_share"] == 1.0
    traffic_of = {c["id"]: c["traffic"] for c in report["clusters"]}
    assigned = clusters(conn_ac)
    order = [traffic_of[assigned[r]] for r in shown]
    assert order == sorted(order, reverse=True)  # biggest uncovered cluster first
    # then, all covered, the biggest cluster's pending row least like its included one
    biggest = report["clusters"][0]["id"]
    assert assigned[after] == biggest
    (kept,) = [r for r in shown if assigned[r] == biggest]
    texts = {
        int(r["id"]): str(r["user_prompt"])
        for r in conn_ac.execute(f"SELECT id, user_prompt::text FROM {TABLE}")
    }  # type: ignore[call-overload]
    members = [r for r, k in assigned.items() if k == biggest and r != kept]
    sigs = signatures.signatures([texts[kept], *(texts[r] for r in members)])
    alike = dict(zip(members, signatures.similarity(sigs[1:], sigs[0]).tolist(), strict=True))
    assert alike[after] == min(alike.values()) < 1.0


def test_include_warns_of_a_near_duplicate_and_includes_anyway(db_url: str, conn_ac: Conn) -> None:
    first = add_row(conn_ac, NS, "What is the capital of France?", included=True)
    twin = add_row(conn_ac, NS, "what is the capital of France ?!", included=False)
    other = add_row(conn_ac, NS, "What is the capital of Germany?", included=False)
    result = run(db_url, "include", NS, str(twin), str(other))
    assert result.exit_code == 0
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1
    assert re.match(
        rf"warning: row {twin} is a near-duplicate of included row {first} ", warnings[0]
    )
    listed = run_json(db_url, "list", NS, "--included")
    assert {r["id"] for r in listed} == {first, twin, other}


def test_export_dedupe_near_keeps_one_of_each_group(
    db_url: str, conn_ac: Conn, tmp_path: Path
) -> None:
    plain = add_row(conn_ac, NS, "What is the capital of France?")
    popular = add_row(conn_ac, NS, "what is the capital of france")
    conn_ac.execute(f"UPDATE {TABLE} SET times_seen = 9 WHERE id = %s", [popular])
    fixed = add_row(
        conn_ac,
        NS,
        "WHAT IS THE CAPITAL OF FRANCE!",
        corrected={"role": "assistant", "content": "Paris"},
    )
    others = [add_row(conn_ac, NS, f"Name three rivers of {c}") for c in ("Peru", "Chile Andes")]
    others.append(add_row(conn_ac, NS, "Tell me a joke about compilers"))
    result = run(
        db_url, "export", NS, "--out", str(tmp_path / "d"), "--model", MODEL, "--dedupe", "near"
    )
    assert result.exit_code == 0, result.output
    assert f"dropped 2 near-duplicate rows: {plain} (kept {fixed}), {popular} (kept {fixed})" in (
        result.stdout
    )
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["near_duplicates"] == [
        {"id": plain, "kept": fixed},
        {"id": popular, "kept": fixed},
    ]
    written = manifest["rows"]["train"]["ids"] + manifest["rows"]["validation"]["ids"]
    assert sorted(written) == sorted([fixed, *others])
    plain_export = run_json(db_url, "export", NS, "--out", str(tmp_path / "e"), "--model", MODEL)
    assert "near_duplicates" not in plain_export
    assert plain_export["counts"]["examples"] == 6


def test_dedupe_near_chooses_among_the_rows_that_will_be_written(
    db_url: str, conn_ac: Conn, tmp_path: Path
) -> None:
    """A flagged row the export skips never wins its group: the twin it would have
    dropped is written instead, and nothing is listed as dropped for it."""
    plain = add_row(conn_ac, NS, "What is the capital of France?")
    cut = add_row(conn_ac, NS, "what is the capital of france")  # most seen, corrected...
    conn_ac.execute(
        f"UPDATE {TABLE} SET times_seen = 9, flags = '{{truncated}}',"
        ' corrected_response = \'{"role": "assistant", "content": "Paris"}\''
        " WHERE id = %s",
        [cut],
    )  # ...but flagged, its flags unaccepted: export skips it
    manifest = run_json(
        db_url, "export", NS, "--out", str(tmp_path / "d"), "--model", MODEL, "--dedupe", "near"
    )
    assert manifest["near_duplicates"] == []
    assert manifest["skipped"] == [{"id": cut, "reason": "flagged: truncated"}]
    written = json.loads((tmp_path / "d" / "manifest.json").read_text())["rows"]
    assert written["train"]["ids"] + written["validation"]["ids"] == [plain]
    run(db_url, "include", NS, str(cut), "--accept-flags")  # now both are written: one kept
    manifest = run_json(
        db_url, "export", NS, "--out", str(tmp_path / "e"), "--model", MODEL, "--dedupe", "near"
    )
    assert manifest["near_duplicates"] == [{"id": plain, "kept": cut}]


def test_new_rows_join_existing_clusters(db_url: str, conn_ac: Conn) -> None:
    truth = fill(conn_ac, n=80, groups=4)
    run_json(db_url, "coverage", NS)
    before = clusters(conn_ac)
    cluster_of = {truth[r]: k for r, k in before.items()}
    rng = random.Random(99)
    later = {add_row(conn_ac, NS, prompt(t, rng), included=False): t for t in (0, 1, 2, 3, 3)}
    unseen = [
        add_row(conn_ac, NS, prompt(len(TEMPLATES) - 1, rng), included=False) for _ in range(3)
    ]
    result = run(db_url, "coverage", NS)
    assert f"{len(later) + 3} rows assigned now (1 new clusters" in result.stdout
    after = clusters(conn_ac)
    assert {r: after[r] for r in before} == before  # nothing old moved
    assert all(after[r] == cluster_of[t] for r, t in later.items())
    assert len({after[r] for r in unseen}) == 1 and after[unseen[0]] not in before.values()
    recluster = run_json(db_url, "coverage", NS, "--recluster")
    assert len(recluster["clusters"]) == 5


def test_a_deleted_row_leaves_its_cluster(db_url: str, conn_ac: Conn) -> None:
    truth = fill(conn_ac, n=20, groups=2)
    run_json(db_url, "coverage", NS)
    gone = min(truth)
    conn_ac.execute(f"DELETE FROM {TABLE} WHERE id = %s", [gone])
    assert gone not in clusters(conn_ac)
    report = run_json(db_url, "coverage", NS)
    assert sum(c["size"] for c in report["clusters"]) == len(truth) - 1


def test_embeddings_recluster_through_the_provider(
    db_url: str, conn_ac: Conn, fake_openai: Any
) -> None:
    truth = fill(conn_ac, n=60, groups=3)
    env = {"OPENAI_API_KEY": "sk-test-cov", "OPENAI_BASE_URL": f"{fake_openai.url}/v1"}
    result = run(
        db_url, "coverage", NS, "--embeddings", "text-embedding-3-small", "--json", env=env
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assigned = clusters(conn_ac)
    by_cluster: dict[int, set[int]] = {}
    for row, cluster in assigned.items():
        by_cluster.setdefault(cluster, set()).add(truth[row])
    assert sorted(map(len, by_cluster.values())) == [1, 1, 1]  # the three templates, pure
    assert sum(c["size"] for c in report["clusters"]) == len(truth)
    down = run(
        db_url,
        "coverage",
        NS,
        "--embeddings",
        "m",
        env={**env, "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"},
    )
    assert down.exit_code != 0
    assert len(down.stderr.strip().splitlines()) == 1
    assert "cannot reach the provider" in down.stderr
    assert clusters(conn_ac) == assigned  # a failed recluster changes nothing


@pytest.fixture
def curator_url(pg_server: str, db_url: str) -> Iterator[str]:
    """db_url as a login that is only a curator (curation_curator)."""
    name = f"curator_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.with_dbname(pg_server, "postgres"), autocommit=True) as c:
        c.execute(f"CREATE ROLE {name} LOGIN IN ROLE curation_curator")
    yield make_conninfo(**{**conninfo_to_dict(db_url), "user": name})  # type: ignore[arg-type]
    with psycopg.connect(db_url, autocommit=True) as d:
        d.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(pg.with_dbname(pg_server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP ROLE {name}")


def test_a_curator_can_cluster_and_review(conn_ac: Conn, curator_url: str) -> None:
    """As a curation_curator login, through the library (test_flags: through the CLI)."""
    truth = fill(conn_ac, n=30, groups=2)
    with psycopg.connect(curator_url, autocommit=True, row_factory=psycopg.rows.dict_row) as c:
        coverage.update(c, NS)
        fill(conn_ac, n=10, seed=5, groups=3)
        assert coverage.update(c, NS).assigned == 10  # incremental, too
        assert len(coverage.report(c, NS)["clusters"]) == 3
        plan = coverage.plan(c, NS)
        with c.transaction():
            assert coverage.next_for_review(c, NS, [], plan) is not None
        assert coverage.update(c, NS, recluster=True).assigned == len(truth) + 10


def test_the_plan_leaves_out_decided_clusters(db_url: str, conn_ac: Conn) -> None:
    """The plan reads only the decided rows: a cluster decided through is left out, one
    with an included row is covered, the rest are ranked by their stored traffic."""
    fill(conn_ac, n=60, groups=3)
    run_json(db_url, "coverage", NS)
    members: dict[int, list[int]] = {}
    for row, cluster in clusters(conn_ac).items():
        members.setdefault(cluster, []).append(row)
    done, covered, open_ = sorted(members)
    conn_ac.execute(f"UPDATE {TABLE} SET excluded = now() WHERE id = ANY(%s)", [members[done]])
    conn_ac.execute(f"UPDATE {TABLE} SET included = now() WHERE id = %s", [members[covered][0]])
    ranked = coverage.plan(conn_ac, NS).order
    traffic = {c: sum(seen(conn_ac)[r] for r in rows) for c, rows in members.items()}
    assert ranked == [[0, -traffic[open_], open_], [1, -traffic[covered], covered]]
