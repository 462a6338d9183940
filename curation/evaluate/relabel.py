"""A teacher model proposes fresh answers; curators accept or reject them."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from curation.db import evals as db
from curation.db.connect import Connection
from curation.errors import UpstreamError
from curation.evaluate import calls
from curation.export.responses import NotChat
from curation.jobs.provider import Provider


def relabel(
    conn: Connection,
    provider: Provider,
    namespace: str,
    model: str,
    *,
    ids: Sequence[int] | None = None,
    limit: int = 100,
    concurrency: int = 4,
) -> tuple[list[int], list[tuple[int, str]]]:
    """Ask ``model`` (with the production prompt) about the rows; store proposals.

    Returns the ids that got a proposal and (id, error) for those that did not.
    Nothing is replaced: a curator accepts or rejects each proposal.
    """
    rows = db.relabel_rows(conn, namespace, ids, limit)

    def one(row: dict[str, Any]) -> tuple[int, dict[str, Any] | None, str | None]:
        try:
            recorded = calls.chat_form(orjson.loads(row["request"]), row["api"])
        except NotChat as exc:
            return row["id"], None, str(exc)
        request = calls.request_for(model, recorded, None, student=False)
        try:
            message, _, _ = provider.chat(**request)
        except UpstreamError as exc:
            return row["id"], None, str(exc)
        return (
            row["id"],
            {
                "role": "assistant",
                **{k: v for k, v in message.items() if k in ("content", "tool_calls")},
            },
            None,
        )

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        answers = list(pool.map(one, rows))
    done, failed = [], []
    for row_id, proposal, error in answers:
        if proposal is None:
            failed.append((row_id, error or "no answer"))
            continue
        db.set_proposal(conn, namespace, row_id, proposal, model)
        done.append(row_id)
    return done, failed
