from __future__ import annotations

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import emit, json_option


@click.command("config")
@json_option
@pass_app
def config_command(app: AppContext, as_json: bool) -> None:
    """Print the effective configuration (secrets masked)."""
    emit(app.settings().masked(), as_json)


COMMANDS = [config_command]
