"""Arguments shared by the commands: row ids are positive bigints; who is curating."""

from __future__ import annotations

from typing import Any

import click

from curation.cli.context import AppContext
from curation.curate.rows import ROW_ID_MAX, parse_ids
from curation.errors import InvalidInput

ROW_ID = click.IntRange(1, ROW_ID_MAX)


class RowIds(click.ParamType[tuple[int, ...]]):
    """``--ids 3,14,15`` as a tuple of row ids."""

    name = "ids"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(parse_ids(str(value)))
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)


ROW_IDS = RowIds()


def curator_option(func: Any) -> Any:
    return click.option(
        "--curator", help="Who is curating, for the audit trail [env: CURATION_CURATOR, else USER]."
    )(func)


def who(app: AppContext, curator: str | None) -> str:
    return curator or app.settings().curator
