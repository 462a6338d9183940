"""Export benchmark: BENCH_ROWS logged rows (95% included) exported with token
counting by `curation export`, side by side with `COPY (SELECT ...) TO STDOUT`
of the same rows (the floor: PostgreSQL streaming them, nothing else).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from common import ROOT, scratch_database

ROWS = int(os.environ.get("BENCH_ROWS", 1_000_000))

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

FLOOR = """COPY (SELECT id, version, user_prompt::text, request::text, response::text, corrected_response::text
FROM bench_openai_chat_completion WHERE included IS NOT NULL AND excluded IS NULL ORDER BY id) TO STDOUT"""


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
            t = time.perf_counter()
            size = 0
            with conn.cursor().copy(FLOOR) as copy:
                for block in copy:
                    size += len(block)
            floor_seconds = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "curation",
                "--database-url",
                db,
                "export",
                "bench",
                "--out",
                str(out),
                "--json",
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        export_seconds = time.perf_counter() - t
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    print(
        f"curation export benchmark: {ROWS} logged rows, {exported} included (filled in {fill_seconds:.0f} s)"
    )
    print(
        f"  COPY ... TO STDOUT (floor)    {floor_seconds:7.2f} s  {exported / floor_seconds:9.0f} rows/s  ({size / 1e6:.0f} MB)"
    )
    print(
        f"  curation export (o200k tokens){export_seconds:7.2f} s  {exported / export_seconds:9.0f} rows/s  "
        f"ratio to COPY {export_seconds / floor_seconds:.1f}x"
    )
    print(
        f"  export peak RSS {rss_mb:.0f} MB; files: "
        + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(files.items()))
    )


if __name__ == "__main__":
    main()
