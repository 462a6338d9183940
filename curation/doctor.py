"""``curation doctor``: can this deployment record, curate, export and train?

Each check is a plain function that returns a ``Check``: its name, ``ok``,
``warn`` or ``fail``, and one line saying what was found and what to do.
``check_all`` runs them all in the order a call travels (database, schema, roles,
spool, curation data, tokenizers, provider); the CLI only prints them.
Doctor reads and never changes anything; the work it does on rows is bounded
(the first ``ROW_LIMIT`` included rows of each namespace, ``CORRECTION_LIMIT``
corrections), so it stays quick on a large database.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

from curation.config import Settings, mask_url
from curation.curate import answers
from curation.db import connect, migrate, namespaces
from curation.db import doctor as db
from curation.db.connect import Connection
from curation.errors import CurationError
from curation.export import models, run, tokens
from curation.proxy import spool

Status = Literal["ok", "warn", "fail"]

ROW_LIMIT = 1000  # included rows per namespace built and validated as an export would
CORRECTION_LIMIT = 10_000
PROVIDER_TIMEOUT = 5.0  # seconds for the provider's models endpoint
COUNT_MODEL = "gpt-4o-mini-2024-07-18"  # whose encoding counts when no base model is named
SHOWN = 3  # namespaces, tables or rows named in one line before "and N more"


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: Status
    message: str


def ok(name: str, message: str) -> Check:
    return Check(name=name, status="ok", message=message)


def warn(name: str, message: str) -> Check:
    return Check(name=name, status="warn", message=message)


def fail(name: str, message: str) -> Check:
    return Check(name=name, status="fail", message=message)


def healthy(checks: Iterable[Check]) -> bool:
    return all(c.status != "fail" for c in checks)


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


def guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check that cannot be answered (a refused query, a bad models file) fails alone."""
    try:
        with db.answering(name):
            return check()
    except CurationError as exc:
        return fail(name, str(exc))


def base_models(conn: Connection) -> list[str | None]:
    try:
        with db.answering("namespaces"):
            return [n.base_model for n in namespaces.list_all(conn)]
    except CurationError:
        return []


# -- the database -------------------------------------------------------------------------------


def connect_to(settings: Settings) -> tuple[Check, Connection | None]:
    """Reach the database and compare its schema with this release's head revision."""
    try:
        url = connect.database_url(settings)
        conn = connect.open_connection(url, autocommit=True)
    except CurationError as exc:
        return fail("database", str(exc)), None
    where = mask_url(url) if settings.database_url else f"embedded, in {settings.data_dir / 'pg'}"
    try:
        with db.answering("the schema"):
            have = db.revision(conn)
    except CurationError as exc:
        return fail("database", f"reachable ({where}), but {exc}"), conn
    head = migrate.head()
    if have == head:
        return ok("database", f"reachable ({where}), schema at the head revision {head}"), conn
    behind = f"reachable ({where}), schema at {have or 'none'}, this curation needs {head}"
    if settings.database_url is None:
        return warn(
            "database", f"{behind}; the next command migrates it (or: curation db upgrade)"
        ), conn
    return fail("database", f"{behind}; run: curation db upgrade"), conn


def citext(conn: Connection) -> Check:
    installed, available = db.citext(conn)
    if installed:
        return ok("citext", f"the citext extension {installed} is installed")
    if available:
        return fail("citext", "citext is available but not installed: run: curation db upgrade")
    return fail(
        "citext",
        "the server has no citext extension: install PostgreSQL's contrib package "
        "(e.g. apt install postgresql-contrib) or use a server that ships it",
    )


def roles(conn: Connection) -> Check:
    if not db.curator_role_exists(conn):
        return fail(
            "roles",
            "the role curation_curator is missing: as a login with CREATEROLE, in psql: CREATE ROLE "
            "curation_curator NOLOGIN; SELECT curation_grant_curator(inhrelid::regclass) FROM "
            "pg_inherits WHERE inhparent = 'openai_chat_completion'::regclass;",
        )
    gaps = db.grant_gaps(conn)
    if not gaps:
        return ok(
            "roles",
            "curation_curator reads every namespace table and changes only curation columns",
        )
    described = [
        f"{g.table} ({', '.join([*g.missing, *(f'extra {e}' for e in g.extra)])})" for g in gaps
    ]
    return fail(
        "roles",
        f"curation_curator's grants differ from the migrations' on {listed(described)}; as the "
        f"tables' owner, in psql: {' '.join(grant_fix(g.table) for g in gaps[:SHOWN])}",
    )


def grant_fix(table: str) -> str:
    if table.endswith("_openai_chat_completion"):
        return f"REVOKE ALL ON {table} FROM curation_curator; SELECT curation_grant_curator('{table}');"
    return f"GRANT SELECT ON {table} TO curation_curator;"


# -- the spool ----------------------------------------------------------------------------------


def spool_dir(directory: Path, settings: Settings, conn: Connection | None) -> Check:
    """Writable, and how much of it is not in PostgreSQL yet."""
    name = "spool"
    problem = not_writable(directory)
    if problem:
        return fail(name, f"{problem}; fix that, or set CURATION_SPOOL_DIR to a writable folder")
    if not directory.exists():
        return ok(name, f"{directory} does not exist yet; the proxy creates it (it can)")
    sizes = spool.segment_sizes(directory)
    if not sizes:
        return ok(name, f"{directory} is writable and holds no captures")
    checkpoint = None
    if conn is not None:
        with db.answering("the spool's checkpoint"):
            checkpoint = (
                db.spool_checkpoint(conn, spool_id) if (spool_id := read_id(directory)) else None
            )
    backlog = spool.bytes_after(sizes, spool.Position(*checkpoint) if checkpoint else None)
    rejected = size_of(directory / "rejected.jsonl")
    notes = (
        [
            f"{rejected} bytes of captures set aside in {directory / 'rejected.jsonl'} (README: Reliability)"
        ]
        if rejected
        else []
    )
    idle = time.time() - newest_change(directory, sizes)
    if backlog and idle > settings.recorder_stall_seconds:
        notes.insert(
            0,
            f"{backlog} bytes of captures are not in PostgreSQL and nothing was added for "
            f"{idle:.0f} s: start a proxy on it to replay them (curation proxy --spool-dir "
            f"{directory}); if one runs, see its /readyz",
        )
    elif backlog > settings.spool_max_bytes // 2:
        notes.insert(
            0,
            f"{backlog} bytes waiting, over half its cap: is PostgreSQL reachable from the proxy?",
        )
    if notes:
        return warn(name, f"{directory}: {'; '.join(notes)}")
    return ok(name, f"{directory} is writable; {backlog} bytes waiting for the recorder")


def not_writable(directory: Path) -> str | None:
    """Why the proxy could not write its spool in ``directory``; None if it could."""
    target = directory
    while not target.exists() and target.parent != target:
        target = target.parent  # the proxy makes the missing folders
    if not target.is_dir():
        return f"spool directory {directory}: {target} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-"):
            pass
    except OSError as exc:
        return f"spool directory {directory}: cannot write in {target} ({exc.strerror or exc})"
    return None


def read_id(directory: Path) -> str | None:
    try:
        return str(uuid.UUID((directory / "id").read_text().strip()))
    except (OSError, ValueError):
        return None


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def newest_change(directory: Path, sizes: dict[int, int]) -> float:
    times = [0.0]
    for segment in sizes:
        try:
            times.append(os.stat(directory / f"{segment:012d}{spool.SUFFIX}").st_mtime)
        except OSError:
            continue
    return max(times)


# -- curation data ------------------------------------------------------------------------------


def prompts(conn: Connection) -> Check:
    found = namespaces.list_all(conn)
    if not found:
        return ok(
            "prompts",
            "no namespaces yet; create each with its short prompt: curation ns create NS --system-prompt '...'",
        )
    missing = [n.name for n in found if not n.training_system_prompt]
    if not missing:
        return ok("prompts", f"all {len(found)} namespaces have a training system prompt")
    return warn(
        "prompts",
        f"no training system prompt for {listed(missing)}: their examples would carry no system "
        "message; set one: curation ns set NS --system-prompt '...' (a start: curation ns suggest-prompt NS)",
    )


def corrections(conn: Connection) -> Check:
    rows = db.corrections(conn, CORRECTION_LIMIT)
    odd = [r for r in rows if not answers.same_style(r["original"], r["correction"])]
    scope = f" (the first {CORRECTION_LIMIT} checked)" if len(rows) == CORRECTION_LIMIT else ""
    if not odd:
        return ok(
            "corrections", f"{len(rows)} corrections are written as their originals are{scope}"
        )
    by_ns: dict[str, list[int]] = {}
    for r in odd:
        by_ns.setdefault(r["namespace"], []).append(int(r["id"]))
    where = listed([f"{ns} rows {listed([str(i) for i in ids])}" for ns, ids in by_ns.items()])
    return warn(
        "corrections",
        f"{len(odd)} corrections are JSON written differently from their original ({where}){scope}: "
        "training targets would mix two formats; save each again: curation edit NS ID",
    )


def exportable(conn: Connection, settings: Settings) -> Check:
    """Build and validate each namespace's first included rows exactly as an export would."""
    counts = db.included_counts(conn)
    if not counts:
        return ok("export", "no included rows yet")
    bad: list[str] = []
    unchecked: list[str] = []
    checked = failed = 0
    for name in counts:
        ns = namespaces.get(conn, name)
        try:
            info = model_for_rows(ns.base_model, settings)
        except CurationError:  # the tokenizer line says why
            unchecked.append(name)
            continue
        request = run.ExportRequest(
            namespace=name,
            out_dir=Path("."),
            base_model=info.name,
            system_prompt=ns.training_system_prompt,
        )
        outcome = run.process_chunk(db.first_included(conn, name, ROW_LIMIT), request, info)
        reasons = Counter(reason_code(reason) for _, reason in outcome.skipped)
        checked += outcome.rows
        if reasons:
            failed += sum(reasons.values())
            bad.append(f"{name}: {', '.join(f'{n} {why}' for why, n in reasons.most_common())}")
    scope = (
        f" (the first {ROW_LIMIT} of each namespace)"
        if any(n > ROW_LIMIT for n in counts.values())
        else ""
    )
    notes = [f"not checked: {listed(unchecked)} (its tokenizer does not load)"] if unchecked else []
    if bad:
        notes.insert(
            0,
            f"{failed} of {checked} included rows cannot be exported{scope}: {'; '.join(bad)}; "
            "an export skips them and lists each: curation export NS --out DIR",
        )
    if notes:
        return warn("export", "; ".join(notes))
    return ok(
        "export", f"{checked} included rows in {len(counts)} namespaces build valid examples{scope}"
    )


def model_for_rows(base_model: str | None, settings: Settings) -> models.ModelInfo:
    """The namespace's base model; without one, shapes are checked and tokens counted with
    COUNT_MODEL's encoding, but no length limit is applied."""
    if base_model:
        return tokens.prepare(models.lookup(base_model, settings.models_file, open_models=True))
    info = tokens.prepare(models.lookup(COUNT_MODEL, settings.models_file))
    return replace(info, max_example_tokens=None)


_CODE = re.compile(r"([a-z_]+): ")


def reason_code(reason: str) -> str:
    """A validation code (``missing_content``) or the skip's own short reason."""
    found = _CODE.match(reason)
    return found.group(1) if found else reason[:60]


# -- tokenizers and the provider ----------------------------------------------------------------


def tokenizers(base_models: Sequence[str | None], settings: Settings) -> Check:
    """The token counting an export needs loads: every base model named, else COUNT_MODEL's."""
    wanted = sorted({m for m in base_models if m}) or [COUNT_MODEL]
    loaded = []
    for name in wanted:
        try:
            info = tokens.prepare(models.lookup(name, settings.models_file, open_models=True))
        except CurationError as exc:
            return fail("tokenizer", f"{name}: {exc}")
        loaded.append(info.encoding or info.tokenizer or info.name)
    return ok(
        "tokenizer", f"the tokenizers of {listed(wanted)} load ({', '.join(sorted(set(loaded)))})"
    )


def provider(settings: Settings) -> Check:
    """The fine-tuning provider answers its models endpoint with the configured key."""
    from curation.jobs.provider import Provider

    base = settings.openai_base_url
    if not settings.openai_api_key:
        return warn(
            "provider",
            f"OPENAI_API_KEY is not set, so {base} was not asked: set it to submit jobs with the "
            "openai backend (ignore this if you train with together or local)",
        )
    client = Provider(settings, max_retries=0)
    try:
        page = client.call(
            f"GET {base.rstrip('/')}/models",
            lambda: client.client.with_options(timeout=PROVIDER_TIMEOUT).models.list(),
        )
    except CurationError as exc:
        return fail("provider", f"{exc}; check OPENAI_API_KEY and OPENAI_BASE_URL")
    return ok("provider", f"{base} accepts the key ({len(page.data)} models listed)")


def listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"
