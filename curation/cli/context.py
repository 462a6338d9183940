"""What every command shares: the settings and a way to the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from curation import config
from curation.config import Settings
from curation.db import connect, migrate


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
        if self._url is None:
            self._url = connect.database_url(self.settings())
        return self._url

    def ensure_schema(self) -> None:
        """Embedded: migrate silently (it is ours). DATABASE_URL: only check."""
        if self.settings().database_url is None:
            migrate.upgrade(self.url())
            return
        with connect.connection(self.url()) as conn:
            migrate.check_current(conn)

    @contextmanager
    def db(self, *, autocommit: bool = False) -> Iterator[connect.Connection]:
        """A transaction on a migrated database (autocommit: each statement commits)."""
        self.ensure_schema()
        with connect.connection(self.url(), autocommit=autocommit) as conn:
            yield conn


pass_app = click.make_pass_decorator(AppContext, ensure=True)
