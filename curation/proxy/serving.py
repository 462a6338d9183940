"""Which namespaces the proxy answers with a fine-tuned model, kept fresh.

A background task re-reads the namespace table every few seconds, so
`curation serve` takes effect in every running proxy without a restart
(and the proxy learns of new namespaces). PostgreSQL away: the last known
settings stay in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any

import psycopg

from curation.db import capture as db

log = logging.getLogger("curation.serving")
REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Serving:
    model: str
    percent: int
    short_prompt: str | None

    def take(self) -> bool:
        """Decide per call: serve this one with the fine-tuned model?"""
        return self.percent >= 100 or random.random() * 100 < self.percent


class ServingTable:
    def __init__(self, url: str, interval: float = REFRESH_SECONDS) -> None:
        self.url = url
        self.interval = interval
        self.by_namespace: dict[str, Serving] = {}
        self.namespaces: set[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="curation-serving")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        conn: db.AsyncConnection | None = None
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        self.url,
                        autocommit=True,
                        connect_timeout=5,
                        row_factory=psycopg.rows.dict_row,
                    )
                self.load(await db.serving_table(conn))
            except (psycopg.Error, OSError) as exc:
                log.debug("serving settings not refreshed: %s", exc)
                if conn is not None:
                    await conn.close()
                conn = None
            await asyncio.sleep(self.interval)

    def load(self, rows: list[dict[str, Any]]) -> None:
        table = {
            str(row["name"]): Serving(
                str(row["serve_model"]), int(row["serve_percent"]), row["training_system_prompt"]
            )
            for row in rows
            if row["serve_model"] and int(row["serve_percent"]) > 0
        }
        if table != self.by_namespace:
            log.info(
                "serving settings changed",
                extra={"serving": {k: v.model for k, v in table.items()}},
            )
        self.by_namespace = table
        self.namespaces = {str(row["name"]) for row in rows}
