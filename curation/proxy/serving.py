"""Which namespaces the proxy answers with a fine-tuned model, kept fresh.

A background task re-reads the namespace table every few seconds, so
`curation serve` takes effect in every running proxy without a restart
(and the proxy learns of new namespaces). PostgreSQL away: the last known
settings stay in force. A student served elsewhere (``serve_endpoint``) is
called there, with the key read from the variable the namespace names (the
database never holds the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from curation.config import secret_from_env
from curation.db.serving import ServingSettings
from curation.errors import DatabaseUnavailable

log = logging.getLogger("curation.serving")
REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Serving:
    model: str
    percent: int
    short_prompt: str | None
    endpoint: str | None = None  # base URL of the student's OpenAI-compatible API; None: upstream
    api_key: str | None = field(default=None, repr=False)
    shadow_percent: int = 0  # of the teacher's calls, also asked of the student in the background
    watch_percent: int = 0  # of the student's calls, also asked of the teacher in the background
    per_minute: int = 600  # background calls per minute of this namespace, per proxy
    compare: str | None = None  # the comparator (exact, json, a command); None: exact

    def take(self) -> bool:
        """Decide per call: serve this one with the fine-tuned model?"""
        return chance(self.percent)

    def shadow(self) -> bool:
        """Decide per call the teacher answered: also ask the student, in the background?"""
        return chance(self.shadow_percent)

    def watch(self) -> bool:
        """Decide per call the student answered: also ask the teacher, in the background?"""
        return chance(self.watch_percent)


def chance(percent: int) -> bool:
    return percent >= 100 or random.random() * 100 < percent


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
        settings = ServingSettings(self.url)
        while True:
            try:
                self.load(await settings.read())
            except DatabaseUnavailable as exc:
                log.debug("serving settings not refreshed: %s", exc)
            await asyncio.sleep(self.interval)

    def load(self, rows: list[dict[str, Any]]) -> None:
        table = {
            str(row["name"]): serving_of(row)
            for row in rows
            if row["serve_model"]
            and (int(row["serve_percent"]) > 0 or int(row.get("serve_shadow_percent") or 0) > 0)
        }
        if table != self.by_namespace:
            log.info(
                "serving settings changed",
                extra={
                    "serving": {k: [v.model, v.endpoint or "upstream"] for k, v in table.items()}
                },
            )
            for name, row in ((r["name"], r) for r in rows if r.get("serve_endpoint_key_env")):
                if name in table and table[name].api_key is None:
                    log.warning(
                        "%s: the student's key variable %s is not set in the proxy's environment;"
                        " calls go to %s without a key",
                        name,
                        row["serve_endpoint_key_env"],
                        row["serve_endpoint"],
                    )
        self.by_namespace = table
        self.namespaces = {str(row["name"]) for row in rows}


def serving_of(row: dict[str, Any]) -> Serving:
    key_env = row.get("serve_endpoint_key_env")
    return Serving(
        str(row["serve_model"]),
        int(row["serve_percent"]),
        row["training_system_prompt"],
        row.get("serve_endpoint") or None,
        secret_from_env(key_env) if key_env else None,
        shadow_percent=int(row.get("serve_shadow_percent") or 0),
        watch_percent=int(row.get("serve_watch_percent") or 0),
        per_minute=int(row.get("shadow_per_minute") or 600),
        compare=row.get("compare") or None,
    )
