"""Doctor's checks on curation data: training prompts, corrections' style, exportable rows.

The work is bounded (the first ``ROW_LIMIT`` included rows of each namespace,
``CORRECTION_LIMIT`` corrections), so it stays quick on a large database.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from curation.config import Settings
from curation.curate import answers
from curation.db import doctor as db
from curation.db import namespaces
from curation.db.connect import Connection
from curation.doctor.check import Check, listed, ok, warn
from curation.doctor.tokenizer import model_for_rows
from curation.errors import CurationError
from curation.export import run

ROW_LIMIT = 1000  # included rows per namespace built and validated as an export would
CORRECTION_LIMIT = 10_000


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


_CODE = re.compile(r"([a-z_]+): ")


def reason_code(reason: str) -> str:
    """A validation code (``missing_content``) or the skip's own short reason."""
    found = _CODE.match(reason)
    return found.group(1) if found else reason[:60]
