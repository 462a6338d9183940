"""The rollout decider against the failures a review found: a vanished leader, a failing
student in shadow, stale tallies and comparisons of the previous stage."""

from __future__ import annotations

import asyncio

from curation.rollout.decider import Decider
from tests.test_rollout import TICK, Conn, start_rollout, until


def test_the_deciders_session_ends_when_its_host_goes_silent(db_url: str, conn: Conn) -> None:
    """Keepalives on both sides and server-side limits: a dead leader's lock is freed."""
    start_rollout(db_url, conn)

    async def main() -> None:
        d = Decider(db_url, interval=TICK, name="decider-a")
        d.start()
        try:
            await until(lambda: d.leading)
            session = d.db._conn
            assert session is not None
            shown = {}
            for name in (
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
                "statement_timeout",
                "idle_session_timeout",
            ):
                cur = await session.execute(f"SHOW {name}")
                shown[name] = (await cur.fetchone() or {}).get(name)
            assert shown == {
                "tcp_keepalives_idle": "10",
                "tcp_keepalives_interval": "5",
                "tcp_keepalives_count": "3",
                "tcp_user_timeout": "30000",
                "statement_timeout": "5s",
                "idle_session_timeout": "15s",  # 20 ticks of 50 ms, raised to the floor
            }
            given = {o.keyword: o.val for o in session.pgconn.info}  # libpq's side
            assert given[b"keepalives"] == b"1" and given[b"keepalives_idle"] == b"10"
            assert given[b"keepalives_count"] == b"3"
            assert given[b"tcp_user_timeout"] == b"30000"
        finally:
            await d.stop()

    asyncio.run(main())
