"""Replay curated rows against models, score them, record the run.

Calls run with bounded concurrency (the SDK retries 429/5xx itself); a
call that still fails is recorded as an error for that row and model, and
the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from curation.curate.rows import parse_ids
from curation.db import evals as db
from curation.db import namespaces
from curation.db.connect import Connection
from curation.errors import InvalidInput, NotFound, UpstreamError
from curation.evaluate import calls, compare, summary
from curation.export import examples


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    namespace: str
    models: Sequence[str]
    baseline: str | None = None
    rows: str = "validation"  # validation | all-included | comma-separated ids
    compare: str = "exact"
    concurrency: int = 4
    short: bool = False
    models_file: Path | None = None


@dataclass(frozen=True)
class EvalOutcome:
    run_id: int
    models: list[dict[str, Any]]
    rows: int


def evaluate(
    conn: Connection,
    provider: calls.Chat,
    req: EvalRequest,
    on_done: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> EvalOutcome:
    """Replay the rows against every model; ``on_start(calls)`` then ``on_done(1)`` per call."""
    ns = namespaces.get(conn, req.namespace)
    comparator = compare.resolve(req.compare)
    ids, dataset_id = _row_choice(conn, req)
    rows = db.eval_rows(conn, req.namespace, ids=ids, dataset_id=dataset_id)
    sources = [s for s in map(_source, rows) if s is not None]
    if not sources:
        raise NotFound(
            f"no rows to evaluate in {req.namespace} ({req.rows}); include rows, or pick others with --rows"
        )
    everyone = list(dict.fromkeys([*([req.baseline] if req.baseline else []), *req.models]))

    def one(task: tuple[examples.SourceRow, str]) -> summary.Result:
        source, model = task
        student = model != req.baseline and calls.is_student(model, req.short)
        request = calls.request_for(model, source.request, ns.training_system_prompt, student)
        try:
            message, usage, latency = provider.chat(**request)
        except UpstreamError as exc:
            result = summary.Result(row_id=source.id, model=model, matched=None, error=str(exc))
        else:
            actual = calls.answer_text(message)
            result = summary.Result(
                row_id=source.id,
                model=model,
                matched=comparator(calls.expected_text(source), actual),
                answer=actual,
                error=None,
                latency_ms=latency,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        return result

    tasks = [(s, m) for s in sources for m in everyone]
    if on_start:
        on_start(len(tasks))
    results = []
    with ThreadPoolExecutor(max_workers=max(1, req.concurrency)) as pool:
        for result in pool.map(
            one, tasks
        ):  # in order, on this thread: progress bars are not thread-safe
            results.append(result)
            if on_done:
                on_done(1)
    per_model = summary.summarise(results, req.baseline, req.models_file)
    run_id = db.record_run(
        conn,
        {
            "namespace": req.namespace,
            "dataset_id": dataset_id,
            "rows_source": req.rows,
            "compare": req.compare,
            "baseline": req.baseline,
            "models": everyone,
            "summary": {"models": per_model, "rows": len(sources)},
        },
        (
            (
                r.row_id,
                r.model,
                r.matched,
                r.answer,
                r.error,
                r.latency_ms,
                r.prompt_tokens,
                r.completion_tokens,
            )
            for r in results
        ),
    )
    return EvalOutcome(run_id, per_model, len(sources))


def _row_choice(conn: Connection, req: EvalRequest) -> tuple[list[int] | None, int | None]:
    if req.rows == "all-included":
        return None, None
    if req.rows == "validation":
        dataset_id = db.latest_dataset(conn, req.namespace)
        if dataset_id is None:
            raise NotFound(
                f"{req.namespace} has no dataset yet, so no validation rows: run curation export "
                "(or retrain) first, or use --rows all-included"
            )
        return None, dataset_id
    try:
        return parse_ids(req.rows), None
    except InvalidInput as exc:
        raise InvalidInput(
            f"--rows {req.rows!r}: use validation, all-included or row ids, e.g. 3,14,15"
        ) from exc


def _source(row: dict[str, Any]) -> examples.SourceRow | None:
    """The row as the chat row it amounts to (a Responses row converted); None for one
    with no chat form, which export skips too."""
    source = examples.SourceRow(
        id=row["id"],
        version=row["version"],
        user_prompt=row["user_prompt"],
        request=orjson.loads(row["request"]),
        response=orjson.loads(row["response"]),
        corrected_response=orjson.loads(row["corrected_response"])
        if row["corrected_response"]
        else None,
    )
    try:
        return examples.as_chat(source)
    except examples.Skip:
        return None
