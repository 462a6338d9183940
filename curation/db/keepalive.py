"""Connection settings for a long-lived session whose peer may vanish without a word.

A host that dies (power, network partition) sends no FIN: without keepalives its
sessions, and the locks they hold, live on the server for the kernel's default
(about 2 h). These settings end such a session within about 30 s on both sides:
libpq's (the client notices a silent server) and the server's (it notices a
silent client and ends the session, releasing its locks). The recorder
(capture.py) and the rollout decider (rollout.py) connect with them.
"""

from __future__ import annotations

from typing import Any

KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 30_000

CLIENT: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE_S,
    "keepalives_interval": KEEPALIVE_INTERVAL_S,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": USER_TIMEOUT_MS,
}
"""psycopg/libpq connect() keyword arguments."""

SERVER: dict[str, str] = {
    "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
    "tcp_user_timeout": str(USER_TIMEOUT_MS),
}
"""The same on the server's side of the socket (session settings)."""
