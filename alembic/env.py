"""Alembic environment: migrations are raw SQL run on a connection we hand in.

``curation db upgrade`` passes its open SQLAlchemy connection through
``config.attributes["connection"]``. Every run sets lock/statement timeouts
and takes an advisory lock, so two processes never migrate at once.
"""

from __future__ import annotations

from sqlalchemy import text

from alembic import context

MIGRATION_LOCK = 727_001  # pg_advisory_lock key: "curation migrations"


def run() -> None:
    connection = context.config.attributes["connection"]
    connection.execute(text("SET lock_timeout = '10s'"))
    connection.execute(text("SET statement_timeout = '10min'"))
    connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK})"))
    try:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
    except BaseException:
        connection.rollback()  # an aborted transaction would refuse the unlock below
        raise
    finally:
        connection.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run: curation db upgrade")
run()
