"""The rollout decider: a task every proxy runs, one of which decides at a time.

Each tick the decider asks for a PostgreSQL session advisory lock on its own
connection; the process that holds it reads, for every namespace with a
rollout under way, the comparisons and tallies of the stage, asks
``policy.decide`` and applies the step: the namespace's shares and stage and
a ``rollout_step`` row, in one statement. The proxies follow through their
serving refresh. A proxy that stops or dies closes its connection, which
releases the lock; the next decider to ask takes over within a tick.
PostgreSQL away: the decider logs, waits a tick and tries again; it never
takes its proxy down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from curation.db.rollout import DeciderConnection
from curation.errors import CurationError, DatabaseUnavailable
from curation.rollout import policy

log = logging.getLogger("curation.rollout")
TICK_SECONDS = 1.0
PRUNE_SECONDS = 60.0  # how often the leader drops day-old serving tallies


def process_name() -> str:
    """host:pid, as rollout_step.decided_by names the decider."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32]
    return f"{host}:{os.getpid()}"


@dataclass(frozen=True)
class Step:
    namespace: str
    from_stage: str
    to_stage: str
    reason: str


class Decider:
    def __init__(
        self, url: str, *, interval: float = TICK_SECONDS, name: str | None = None
    ) -> None:
        self.interval = interval
        self.name = name or process_name()
        self.db = DeciderConnection(url, idle_s=20 * interval)
        self._task: asyncio.Task[None] | None = None
        self._outage: str | None = None  # logged once per outage
        self._unreadable: set[str] = set()  # namespaces whose rollout JSON was logged as bad
        self._pruned: float | None = None  # time.monotonic() of the last tally pruning

    @property
    def leading(self) -> bool:
        return self.db.leading

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="curation-rollout")

    async def stop(self) -> None:
        """Stop deciding and close the connection: the lock goes to the next decider."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.db.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
                self._outage = None
            except DatabaseUnavailable as exc:
                if self._outage is None:
                    log.warning("rollout decider: PostgreSQL unavailable, retrying: %s", exc)
                self._outage = str(exc)
            except Exception:  # a bug must not take the proxy down: log it, try next tick
                log.exception("rollout decider failed; trying again next tick")
                await self.db.close()
            await asyncio.sleep(self.interval)

    async def tick(self) -> list[Step]:
        """One round: if this process decides, every active rollout's step, if any."""
        if not await self.db.lead():
            return []
        now = time.monotonic()
        if self._pruned is None or now - self._pruned >= PRUNE_SECONDS:
            await self.db.prune()
            self._pruned = now
        steps = []
        for row in await self.db.active():
            step = await self._decide(row)
            if step is not None:
                steps.append(step)
        return steps

    async def _decide(self, row: dict[str, Any]) -> Step | None:
        name, stage, since = row["name"], row["stage"], row["since"]
        try:
            rules = policy.Policy.from_json(row["rollout"]["policy"])
            if not (row["serve_model"] and since and policy.is_stage(stage)):
                raise ValueError(f"stage {stage!r} since {since!r} of {row['serve_model']!r}")
        except (CurationError, KeyError, TypeError, ValueError) as exc:
            if name not in self._unreadable:
                log.error("%s: rollout unreadable, left alone: %s", name, exc)
            self._unreadable.add(name)
            return None
        self._unreadable.discard(name)
        numbers = await self.db.stats(
            {
                "namespace": name,
                "model": row["serve_model"],
                "since": since,
                "samples": rules.min_samples,
                "window": rules.window,
                "error_window_s": rules.error_window_s,
            }
        )
        stats = policy.Stats(**{k: int(v) for k, v in numbers.items()})
        decision = policy.decide(rules, stage, stats)
        if decision is None:
            return None
        shares = policy.shares(rules, decision.to_stage)
        applied = await self.db.apply(
            {
                "namespace": name,
                "from_stage": stage,
                "since": since,
                "from_percent": row["serve_percent"],
                "to_stage": decision.to_stage,
                "serve": shares.serve,
                "shadow": shares.shadow,
                "watch": shares.watch,
                "reason": decision.reason,
                "agreement": decision.agreement,
                "samples": decision.samples,
                "error_rate": decision.error_rate,
                "decided_by": self.name,
            }
        )
        if not applied:
            return None
        log.info("%s: %s -> %s: %s", name, stage, decision.to_stage, decision.reason)
        return Step(name, stage, decision.to_stage, decision.reason)
