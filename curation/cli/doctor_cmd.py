from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import dumps, json_option, visible
from curation.errors import CurationError


@click.command("doctor")
@click.option(
    "--spool-dir",
    "spool_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A proxy's spool directory to check, repeatable (default: CURATION_SPOOL_DIR's).",
)
@json_option
@pass_app
def doctor_command(app: AppContext, spool_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Check this deployment: one line per check, ok / warn / fail and what to do.

    Database and schema, citext, the curator role's grants, spool directories and
    their backlog, namespaces without a training prompt, corrections written
    differently from their original, included rows an export would skip, the
    tokenizers, and the fine-tuning provider with the configured key. Reads
    only. Exit 0 when nothing fails, 1 otherwise.
    """
    from curation import doctor  # the database, tokenizers and provider: not for --help

    checks = doctor.check_all(app.settings(), spool_dirs)
    if as_json:
        click.echo(dumps({"ok": doctor.healthy(checks), "checks": [asdict(c) for c in checks]}))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.status:<4}  {c.name:<{width}}  {visible(c.message)}")
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        raise CurationError(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")


COMMANDS = [doctor_command]
