"""The proxy's reading of each namespace's serving settings, on its own connection.

The proxy polls these every few seconds (proxy/serving.py); a failure is
``DatabaseUnavailable`` and the next read opens a fresh connection.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from curation.db import queries
from curation.db.capture import AsyncConnection
from curation.db.errors import wrap_errors
from curation.errors import DatabaseUnavailable


class ServingSettings:
    """Every namespace with its serving settings, read on a connection kept between reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: AsyncConnection | None = None

    async def read(self) -> list[dict[str, Any]]:
        try:
            with wrap_errors():
                return await self._read()
        except DatabaseUnavailable:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()
            raise

    async def _read(self) -> list[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=5, row_factory=dict_row
            )
        cur = await self._conn.execute(queries.get("serving_table"))
        return await cur.fetchall()
