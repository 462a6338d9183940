"""``curation doctor``: can this deployment record, curate, export and train?

Each check is a plain function that returns a ``Check`` (``check.py``): its name,
``ok``, ``warn`` or ``fail``, and one line saying what was found and what to do.
``check_all`` runs them all in the order a call travels: the database, schema and
roles (``database.py``), the spool (``spool.py``), curation data (``data.py``),
tokenizers (``tokenizer.py``) and the provider (``provider.py``); the CLI only
prints them. Doctor reads and never changes anything, and bounds the work it does
on rows, so it stays quick on a large database.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from curation.config import Settings
from curation.db import doctor as db
from curation.db import namespaces
from curation.db.connect import Connection
from curation.doctor.check import Check as Check
from curation.doctor.check import guarded, warn
from curation.doctor.check import healthy as healthy
from curation.doctor.data import corrections, exportable, prompts
from curation.doctor.database import citext, connect_to, roles
from curation.doctor.provider import provider
from curation.doctor.spool import spool_dir
from curation.doctor.tokenizer import tokenizers
from curation.errors import CurationError


def check_all(settings: Settings, spool_dirs: Sequence[Path] = ()) -> list[Check]:
    """Every check, in order; those needing the database are skipped (warn) without it."""
    dirs = list(spool_dirs) or [settings.effective_spool_dir]
    found, conn = connect_to(settings)
    if conn is None:
        return [
            found,
            *(warn(n, "not checked: no database") for n in ("citext", "roles")),
            *(guarded("spool", partial(spool_dir, d, settings, None)) for d in dirs),
            *(warn(n, "not checked: no database") for n in DATA_CHECKS),
            tokenizers([], settings),
            provider(settings),
        ]
    with conn:
        current = found.status == "ok"
        return [
            found,
            guarded("citext", lambda: citext(conn)),
            guarded("roles", lambda: roles(conn)),
            *(guarded("spool", partial(spool_dir, d, settings, conn)) for d in dirs),
            *(data_checks(conn, settings) if current else skipped("the schema is behind")),
            tokenizers(base_models(conn) if current else [], settings),
            provider(settings),
        ]


DATA_CHECKS = ("prompts", "corrections", "export")


def skipped(reason: str) -> list[Check]:
    return [warn(n, f"not checked: {reason}") for n in DATA_CHECKS]


def data_checks(conn: Connection, settings: Settings) -> list[Check]:
    return [
        guarded("prompts", lambda: prompts(conn)),
        guarded("corrections", lambda: corrections(conn)),
        guarded("export", lambda: exportable(conn, settings)),
    ]


def base_models(conn: Connection) -> list[str | None]:
    try:
        with db.answering("namespaces"):
            return [n.base_model for n in namespaces.list_all(conn)]
    except CurationError:
        return []
