"""Per-namespace numbers for `curation stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.db import namespaces, queries
from curation.db.connect import Connection
from curation.errors import InvalidInput
from curation.export import models

SUMMED = (
    "calls",
    "distinct_prompts",
    "pending",
    "included",
    "excluded",
    "corrected",
    "tokens_in",
    "tokens_out",
)
COLUMNS = ("namespace", *SUMMED, "spend_usd", "new_since_last_job")


def collect(
    conn: Connection, namespace: str | None, models_file: Path | None
) -> list[dict[str, Any]]:
    """Every namespace's numbers, or NAMESPACE's (NotFound if there is none)."""
    if namespace is not None:
        namespaces.get(conn, namespace)
    models.check_file(models_file)  # a broken file must not read as unknown prices
    by_ns: dict[str, dict[str, Any]] = {}
    for row in conn.execute(queries.get("stats"), {"namespace": namespace}):
        entry = by_ns.setdefault(
            str(row["namespace"]),
            {"namespace": row["namespace"], "spend_usd": 0.0, **dict.fromkeys(SUMMED, 0)},
        )
        for key in SUMMED:
            entry[key] += int(row[key])
        entry["spend_usd"] = _add(entry["spend_usd"], _spend(row, models_file))
    for row in conn.execute(queries.get("new_since_last_job"), {"namespace": namespace}):
        entry = by_ns.setdefault(
            str(row["namespace"]),
            {"namespace": row["namespace"], "spend_usd": 0.0, **dict.fromkeys(SUMMED, 0)},
        )
        entry["new_since_last_job"] = int(row["new_included"])
    for entry in by_ns.values():
        if entry["spend_usd"] is not None:
            entry["spend_usd"] = round(entry["spend_usd"], 4)
    return [by_ns[k] for k in sorted(by_ns)]


def _spend(row: dict[str, Any], models_file: Path | None) -> float | None:
    """Estimated spend of the recorded calls at the configured prices (None: unknown model)."""
    if not row["model"]:
        return None
    try:
        info = models.lookup(str(row["model"]), models_file)
    except InvalidInput:
        return None
    fine_tuned = str(row["model"]).startswith("ft:")
    return info.call_cost(int(row["tokens_in"]), int(row["tokens_out"]), fine_tuned)


def _add(total: float | None, more: float | None) -> float | None:
    if total is None or more is None:
        return None
    return total + more
