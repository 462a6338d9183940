"""Export benchmark: BENCH_ROWS logged rows (95% included) exported with token
counting by `curation export`, side by side with `COPY (<the export's own query>)
TO STDOUT` of the same rows in text format (the floor: PostgreSQL streaming them
to a client that does nothing with them). Also the CPU time each spent, which a
busy machine distorts less than the wall-clock time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT, scratch_database

ROWS = int(os.environ.get("BENCH_ROWS", 1_000_000))
# another checkout (an older commit, say) to export the same rows in the same run
BASELINE = Path(os.environ["BENCH_BASELINE"]) if os.environ.get("BENCH_BASELINE") else None

FILL = """
INSERT INTO bench_openai_chat_completion (namespace, user_prompt, request, response, system_prompt, included, excluded)
SELECT 'bench',
       'I was born in town number ' || g || ' near the river, then moved to city ' || (g %% 977),
       jsonb_build_object('model', 'gpt-4o', 'temperature', 0, 'messages', jsonb_build_array(
           jsonb_build_object('role', 'system', 'content', repeat('You extract geographical locations. ', 15)),
           jsonb_build_object('role', 'user', 'content',
               'I was born in town number ' || g || ' near the river, then moved to city ' || (g %% 977)))),
       json_build_object('id', 'chatcmpl-' || g, 'object', 'chat.completion', 'model', 'gpt-4o-2024-08-06',
           'choices', json_build_array(json_build_object('index', 0, 'finish_reason', 'stop',
               'message', json_build_object('role', 'assistant',
                   'content', '["town number ' || g || '", "city ' || (g %% 977) || '"]'))),
           'usage', json_build_object('prompt_tokens', 140, 'completion_tokens', 14, 'total_tokens', 154)),
       repeat('You extract geographical locations. ', 15),
       CASE WHEN g %% 20 <> 0 THEN now() END,
       CASE WHEN g %% 100 = 1 THEN now() END
FROM generate_series(1, %(rows)s) AS g
"""


def floor_query() -> Any:
    from psycopg import sql

    from curation.db import queries

    return sql.SQL("COPY ({}) TO STDOUT").format(queries.for_namespace("export_rows", "bench"))


def server_cpu(conn: psycopg.Connection[Any]) -> float:
    """CPU seconds of this connection's PostgreSQL backend (it runs on this machine)."""
    try:
        stat = Path(f"/proc/{conn.info.backend_pid}/stat").read_text()
    except OSError:  # a server elsewhere
        return float("nan")
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(u.ru_utime + u.ru_stime, u.ru_maxrss)"
)


def run_export(db: str, out: Path, root: Path) -> tuple[float, float, float]:
    """`curation export` of the bench namespace from the checkout at ``root``:
    seconds, CPU seconds of all its processes, peak RSS (MB) of the largest."""
    with psycopg.connect(db, autocommit=True) as conn:  # each run records its dataset anew
        conn.execute("DELETE FROM dataset")
    command = [sys.executable, "-m", "curation", "--database-url", db, "export", "bench"]
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command, "--out", str(out), "--json"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    seconds = time.perf_counter() - t
    cpu, rss_kb = done.stdout.split()
    return seconds, float(cpu), int(rss_kb) / 1024


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="curation-export-bench-"))
    with scratch_database() as db:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "SELECT curation_create_namespace('bench', 'List the places mentioned, as JSON.', 'gpt-4o-mini-2024-07-18')"
            )
            t = time.perf_counter()
            conn.execute(FILL, {"rows": ROWS})
            conn.execute("VACUUM ANALYZE bench_openai_chat_completion")
            fill_seconds = time.perf_counter() - t
            exported = conn.execute(
                "SELECT count(*) FROM bench_openai_chat_completion WHERE included IS NOT NULL"
                " AND excluded IS NULL"
            ).fetchone()[0]  # type: ignore[index]
            t, cpu, backend = time.perf_counter(), time.process_time(), server_cpu(conn)
            size = 0
            params = {"since": None, "ids": None, "tag_key": None, "tag_value": None}
            with conn.cursor().copy(floor_query(), params) as copy:
                for block in copy:
                    size += len(block)
            floor_seconds = time.perf_counter() - t
            floor_cpu = time.process_time() - cpu + server_cpu(conn) - backend
        export_seconds, export_cpu, rss_mb = run_export(db, out, ROOT)
        baseline = (
            run_export(db, out.with_name(out.name + "-baseline"), BASELINE) if BASELINE else None
        )
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    print(
        f"curation export benchmark: {ROWS} logged rows, {exported} included (filled in {fill_seconds:.0f} s)"
    )
    print(
        f"  COPY ... TO STDOUT (floor)    {floor_seconds:7.2f} s  {exported / floor_seconds:9.0f} rows/s  "
        f"({size / 1e6:.0f} MB; CPU {floor_cpu:.1f} s, client and server backend)"
    )
    print(
        f"  curation export (o200k tokens){export_seconds:7.2f} s  {exported / export_seconds:9.0f} rows/s  "
        f"ratio to COPY {export_seconds / floor_seconds:.1f}x (CPU {export_cpu:.1f} s, "
        f"{export_cpu / exported * 1e6:.0f} us/row, all its processes; PostgreSQL not counted)"
    )
    if baseline is not None:
        seconds, cpu, rss = baseline
        print(
            f"  baseline {BASELINE}: {seconds:.2f} s, {exported / seconds:.0f} rows/s, ratio to COPY "
            f"{seconds / floor_seconds:.1f}x (CPU {cpu:.1f} s, {cpu / exported * 1e6:.0f} us/row), "
            f"peak RSS {rss:.0f} MB"
        )
    print(
        f"  export peak RSS {rss_mb:.0f} MB (its largest process); files: "
        + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(files.items()))
    )


if __name__ == "__main__":
    main()
