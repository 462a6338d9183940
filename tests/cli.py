"""Run the CLI in-process through click's runner, as a user would type it."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from curation.cli import main


def run(
    db_url: str | None, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    prefix = ["--database-url", db_url] if db_url else []
    return CliRunner().invoke(main, [*prefix, *args], input=input, env=env, catch_exceptions=False)


def run_json(db_url: str, *args: str) -> Any:
    result = run(db_url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def spawn(db_url: str, *args: str, env: dict[str, str] | None = None, timeout: int = 60) -> Any:
    """`curation ARGS` in its own process on a real terminal (pexpect), for prompts and progress bars."""
    import os
    import sys

    import pexpect

    from tests.pg import ROOT

    return pexpect.spawn(
        sys.executable,
        ["-m", "curation", "--database-url", db_url, *args],
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
        encoding="utf-8",
        timeout=timeout,
    )
