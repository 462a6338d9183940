"""Per-model numbers of an eval run. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curation.errors import InvalidInput
from curation.export import models


@dataclass(kw_only=True)
class Result:
    row_id: int
    model: str
    matched: bool | None
    answer: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(kw_only=True)
class ModelSummary:
    model: str
    calls: int = 0
    errors: int = 0
    matched: int = 0
    mismatches: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summarise(
    results: list[Result], baseline: str | None, models_file: Any = None
) -> list[dict[str, Any]]:
    by_model: dict[str, ModelSummary] = {}
    for r in results:
        s = by_model.setdefault(r.model, ModelSummary(model=r.model))
        s.calls += 1
        if r.matched is None:
            s.errors += 1
            continue
        s.matched += r.matched
        if not r.matched:
            s.mismatches.append(r.row_id)
        if r.latency_ms is not None:
            s.latencies.append(r.latency_ms)
        s.tokens_in += r.prompt_tokens or 0
        s.tokens_out += r.completion_tokens or 0
    out = [_row(s, models_file) for s in by_model.values()]
    base = next((o for o in out if o["model"] == baseline), None)
    for o in out:
        o["savings_vs_baseline"] = _savings(o, base) if base is not None and o is not base else None
    return out


def _row(s: ModelSummary, models_file: Any) -> dict[str, Any]:
    answered = s.calls - s.errors
    per_in = s.tokens_in / answered if answered else None
    per_out = s.tokens_out / answered if answered else None
    return {
        "model": s.model,
        "calls": s.calls,
        "errors": s.errors,
        "agreement_pct": round(100 * s.matched / answered, 2) if answered else None,
        "mismatches": sorted(s.mismatches),
        "latency_p50_ms": percentile(s.latencies, 50),
        "latency_p95_ms": percentile(s.latencies, 95),
        "tokens_in_per_call": per_in,
        "tokens_out_per_call": per_out,
        "cost_per_1k_calls_usd": cost_per_1k_calls(s.model, per_in, per_out, models_file),
    }


def cost_per_1k_calls(
    model: str, per_in: float | None, per_out: float | None, models_file: Any = None
) -> float | None:
    """USD per 1,000 calls of ``per_in``/``per_out`` tokens each, at the model's price
    (a fine-tuned model at its fine-tuned price). The one pricing rule: ``eval`` reports
    and ``curation serve``'s live numbers both use it. None: no tokens, or no price."""
    if per_in is None or per_out is None:
        return None
    try:
        info = models.lookup(model, models_file)
    except InvalidInput:
        return None
    cost = info.call_cost(per_in, per_out, model.startswith("ft:"))
    return None if cost is None else round(1000 * cost, 6)


def _savings(o: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    def pct(a: float | None, b: float | None) -> float | None:
        return round(100 * (1 - a / b), 1) if a is not None and b else None

    return {
        "cost_pct": pct(o["cost_per_1k_calls_usd"], base["cost_per_1k_calls_usd"]),
        "latency_p50_pct": pct(o["latency_p50_ms"], base["latency_p50_ms"]),
    }
