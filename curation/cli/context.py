"""What every command shares: the settings and a way to the database.

The database modules (psycopg; alembic only to migrate) are imported when a
command first needs them, so `curation --help` and a usage error cost none of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from curation import config
from curation.config import Settings

if TYPE_CHECKING:
    from curation.db.connect import Connection


@dataclass
class AppContext:
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _url: str | None = None

    def settings(self, **more: Any) -> Settings:
        if more:
            self.overrides.update({k: v for k, v in more.items() if v is not None})
            self._settings = None
        if self._settings is None:
            self._settings = config.load(self.overrides)
        return self._settings

    def url(self) -> str:
        from curation.db import connect

        if self._url is None:
            self._url = connect.database_url(self.settings())
        return self._url

    def ensure_schema(self) -> None:
        """Embedded: migrate silently (it is ours). DATABASE_URL: only check."""
        from curation.db import connect

        with connect.connection(self.url(), autocommit=True) as conn:
            self._check_schema(conn)

    def _check_schema(self, conn: Connection) -> None:
        from curation.db import revision
        from curation.errors import SchemaOutdated

        try:
            revision.check_current(conn)
        except SchemaOutdated:
            if self.settings().database_url is not None:
                raise
            from curation.db import migrate  # alembic: only when there is something to do

            conn.rollback()  # hold nothing the migration could wait on
            migrate.upgrade(self.url())

    @contextmanager
    def db(self, *, autocommit: bool = False) -> Iterator[Connection]:
        """A transaction on a migrated database (autocommit: each statement commits)."""
        from curation.db import connect

        with connect.connection(self.url(), autocommit=autocommit) as conn:
            self._check_schema(conn)
            yield conn


pass_app = click.make_pass_decorator(AppContext, ensure=True)
