"""The ``curation`` command: a thin shell over the library.

Each command parses options, calls one function and prints the result. A
``CurationError`` becomes one line on stderr and its exit code; so do a bad
argument (click's usage error, without the usage text) and an ``OSError`` on a
path the user named. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curation import __version__, config
from curation.cli.context import AppContext
from curation.errors import CurationError


class UserError(click.ClickException):
    """A CurationError on its way out: click prints it as one line."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance


def one_line(exc: click.UsageError) -> UserError:
    """A usage error as one line naming the help to read, instead of the usage text."""
    where = f"; see: {exc.ctx.command_path} --help" if exc.ctx else ""
    return UserError(f"{exc.format_message().rstrip('.')}{where}", exc.exit_code)


class CurationGroup(click.Group):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare `curation` shows its help
        except click.UsageError as exc:
            raise one_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CurationError as exc:
            raise UserError(str(exc), exc.exit_code) from exc
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare `curation db` shows its help
        except click.UsageError as exc:
            raise one_line(exc) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            raise UserError(
                f"{exc.filename}: {exc.strerror}; check the path and its permissions", 2
            ) from exc


def log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else config.parse_level(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group(cls=CurationGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", help="PostgreSQL URL [env: DATABASE_URL; unset: embedded].")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the embedded database and spool live [env: CURATION_DATA_DIR].",
)
@click.option("--openai-base-url", help="Fine-tuning/eval provider [env: OPENAI_BASE_URL].")
@click.option(
    "--models-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Extra model limits and prices [env: CURATION_MODELS_FILE].",
)
@click.option("--log-level", callback=log_level, help="Log level [env: CURATION_LOG_LEVEL; INFO].")
@click.version_option(__version__, prog_name="curation")
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str | None,
    data_dir: Path | None,
    openai_base_url: str | None,
    models_file: Path | None,
    log_level: str | None,
) -> None:
    """Capture LLM traffic in Postgres, curate it, fine-tune cheaper models on it.

    Secrets (OPENAI_API_KEY, TOGETHER_API_KEY, CURATION_PROXY_KEYS) are read from the environment
    only: a flag would show them to every user of the machine in `ps`.
    """
    ctx.obj = AppContext(
        {
            "database_url": database_url,
            "data_dir": data_dir,
            "openai_base_url": openai_base_url,
            "models_file": models_file,
            "log_level": log_level,
        }
    )


def _register() -> None:
    from curation.cli import (
        config_cmd,
        coverage_cmd,
        curate_cmd,
        db_cmd,
        doctor_cmd,
        eval_cmd,
        export_cmd,
        flags_cmd,
        jobs_cmd,
        ns_cmd,
        proxy_cmd,
        review_cmd,
        serve_cmd,
        student_cmd,
        train_cmd,
        web_cmd,
    )

    for module in (
        config_cmd,
        db_cmd,
        ns_cmd,
        proxy_cmd,
        curate_cmd,
        review_cmd,
        coverage_cmd,
        flags_cmd,
        export_cmd,
        jobs_cmd,
        eval_cmd,
        serve_cmd,
        student_cmd,
        train_cmd,
        doctor_cmd,
        web_cmd,
    ):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
