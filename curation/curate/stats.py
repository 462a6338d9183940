"""Per-namespace numbers for `curation stats`.

Flags count rows per reason (``flags``: ``{"truncated": 3}``; none: ``{}``).
Spend is priced model by model: rows of a model with no known price are left
out of ``spend_usd`` and counted in ``unpriced_rows`` (one unknown model must
not blank the whole namespace's figure). A namespace without a training prompt
says so, since its exports would carry no system message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.curate import flagged
from curation.db import curate as db
from curation.db import namespaces
from curation.errors import InvalidInput
from curation.export import models

if TYPE_CHECKING:
    from curation.db.connect import Connection

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
COLUMNS = (
    "namespace",
    *SUMMED,
    "spend_usd",
    "unpriced_rows",
    "new_since_last_job",
    "flags",
    "training_system_prompt",
)
NO_MODEL = "(none recorded)"


def collect(
    conn: Connection, namespace: str | None, models_file: Path | None
) -> list[dict[str, Any]]:
    """Every namespace's numbers, or NAMESPACE's (NotFound if there is none)."""
    if namespace is not None:
        namespaces.get(conn, namespace)
    models.check_file(models_file)  # a broken file must not read as unknown prices
    by_ns: dict[str, dict[str, Any]] = {}
    for row in db.stats(conn, namespace):
        entry = by_ns.setdefault(str(row["namespace"]), _empty(str(row["namespace"])))
        for key in SUMMED:
            entry[key] += int(row[key])
        spend = _spend(row, models_file)
        if spend is None:
            entry["unpriced_rows"] += int(row["distinct_prompts"])
            entry["unpriced_models"].append(str(row["model"] or NO_MODEL))
        else:
            entry["spend_usd"] += spend
    for row in db.new_since_last_job(conn, namespace):
        entry = by_ns.setdefault(str(row["namespace"]), _empty(str(row["namespace"])))
        entry["new_since_last_job"] = int(row["new_included"])
        entry["training_system_prompt"] = row["training_system_prompt"]
    for name, found in flagged.counts(conn, namespace).items():
        by_ns.setdefault(name, _empty(name))["flags"] = found
    for entry in by_ns.values():
        entry["spend_usd"] = round(entry["spend_usd"], 4)
    return [by_ns[k] for k in sorted(by_ns)]


def warnings(entry: dict[str, Any]) -> list[str]:
    """What a namespace's numbers should not hide: no training prompt, unpriced rows."""
    from curation.export.run import missing_prompt_warning  # loads the tokenizers: stats only

    found = []
    if not entry["training_system_prompt"]:
        found.append(missing_prompt_warning(entry["namespace"]))
    if entry["unpriced_rows"]:
        rows = entry["unpriced_rows"]
        found.append(
            f"spend_usd of {entry['namespace']} leaves out {rows} row{'s' if rows != 1 else ''}"
            f" of models with no known price ({', '.join(entry['unpriced_models'])}); "
            "add their prices to CURATION_MODELS_FILE"
        )
    return found


def _empty(namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        **dict.fromkeys(SUMMED, 0),
        "spend_usd": 0.0,
        "unpriced_rows": 0,
        "unpriced_models": [],
        "new_since_last_job": 0,
        "flags": {},  # rows per automatic flag (curate/flagged.py)
        "training_system_prompt": None,
    }


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
