"""Namespaces: one per task, each with its own partition table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from curation import names
from curation.db import queries
from curation.errors import NotFound

if TYPE_CHECKING:  # psycopg itself is imported with the first query, not for `curation --help`
    from curation.db.connect import Connection


@dataclass(frozen=True, kw_only=True)
class Namespace:
    name: str
    training_system_prompt: str | None
    base_model: str | None
    backend: str | None  # default training backend; None: openai
    serve_model: str | None
    serve_percent: int
    serve_endpoint: str | None
    serve_endpoint_key_env: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def table(self) -> str:
        return names.table_name(self.name)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Namespace:
        return cls(**row)


def create(
    conn: Connection,
    name: str,
    *,
    training_system_prompt: str | None = None,
    base_model: str | None = None,
) -> bool:
    """Create the namespace and its table in one transaction; False if it existed."""
    names.validate(name)
    params = {
        "name": name,
        "training_system_prompt": training_system_prompt,
        "base_model": base_model,
    }
    row = conn.execute(queries.get("create_namespace"), params).fetchone()
    return bool(row and row["created"])


def list_all(conn: Connection) -> list[Namespace]:
    return [Namespace.from_row(r) for r in conn.execute(queries.get("list_namespaces"))]


def get(conn: Connection, name: str) -> Namespace:
    names.validate(name)
    row = conn.execute(queries.get("get_namespace"), {"name": name}).fetchone()
    if row is None:
        raise NotFound(
            f"unknown namespace {name!r}; see: curation ns list, or create it: curation ns create {name}"
        )
    return Namespace.from_row(row)


def counts(conn: Connection, name: str) -> dict[str, int]:
    row = conn.execute(queries.get("namespace_counts"), {"name": name}).fetchone()
    keys = ("rows", "calls", "included", "excluded", "pending")
    return {k: int(row[k]) if row else 0 for k in keys}


_UNSET: Any = object()


def update(
    conn: Connection,
    name: str,
    *,
    training_system_prompt: str | None = _UNSET,
    base_model: str | None = _UNSET,
    backend: str | None = _UNSET,
) -> Namespace:
    """Change settings; arguments left out keep their value (None clears)."""
    get(conn, name)
    params = {
        "name": name,
        "set_prompt": training_system_prompt is not _UNSET,
        "training_system_prompt": None
        if training_system_prompt is _UNSET
        else training_system_prompt,
        "set_model": base_model is not _UNSET,
        "base_model": None if base_model is _UNSET else base_model,
        "set_backend": backend is not _UNSET,
        "backend": None if backend is _UNSET else backend,
    }
    conn.execute(queries.get("update_namespace"), params)
    return get(conn, name)


@dataclass(frozen=True, kw_only=True)
class PromptUse:
    """A production system prompt and how much of a namespace's traffic carried it."""

    system_prompt: str
    rows: int
    calls: int
    rows_with_a_prompt: int
    distinct_prompts: int
    model: str | None  # the model that most often answered it


def common_system_prompt(conn: Connection, name: str) -> PromptUse | None:
    """The most common production system prompt (by calls); None if no row carries one."""
    get(conn, name)
    row = conn.execute(queries.get("common_system_prompt"), {"name": name}).fetchone()
    if row is None:
        return None
    counts = ("rows", "calls", "rows_with_a_prompt", "distinct_prompts")
    return PromptUse(
        system_prompt=row["system_prompt"], model=row["model"], **{k: int(row[k]) for k in counts}
    )
