"""What `curation serve` changes and shows: by hand, shadow, an automatic rollout, off.

Every change of share is one transaction that also writes a ``rollout_step``
row naming the login, so ``--history`` tells the whole story, the decider's
steps and the people's alike. A change by hand ends an automatic rollout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.db import rollout as db
from curation.errors import Conflict, InvalidInput
from curation.evaluate import summary
from curation.rollout.policy import OFF, SHADOW, Policy, stage_of

if TYPE_CHECKING:
    from curation.db.connect import Connection


@dataclass(frozen=True, kw_only=True)
class Change:
    model: str | None = None
    endpoint: str | None = None
    key_env: str | None = None
    percent: int | None = None
    shadow: int | None = None
    watch: int | None = None
    rollout: Policy | None = None  # --rollout auto
    off: bool = False
    per_minute: int | None = None
    force: bool = False  # serve by hand with no clean eval

    @property
    def serving(self) -> bool:
        """Whether this changes the shares (or only the budget)."""
        return (
            self.off
            or self.rollout is not None
            or self.model is not None
            or (self.percent is not None or self.shadow is not None or self.watch is not None)
        )


def apply(conn: Connection, namespace: str, change: Change, who: str) -> None:
    """The change and its history row, in one transaction."""
    from curation.db import evals

    with conn.transaction():
        now = db.settings(conn, namespace, for_update=True)
        if change.per_minute is not None:
            db.set_budget(conn, namespace, change.per_minute)
        if not change.serving:
            return
        model = change.model or now["serve_model"]
        if model is None and not change.off:
            raise InvalidInput(f"{namespace} serves no model yet: give --model")
        if change.off:
            target, reason, values = OFF, f"off, by {who}", _values(None, change, 100, 0, 0, None)
        elif change.rollout is not None:
            target, reason = SHADOW, f"rollout started by {who}"
            state = {"model": model, "stage": SHADOW, "started_by": who}
            rollout = json.dumps({**state, "policy": change.rollout.to_json()})
            values = _values(model, change, 0, change.rollout.shadow_percent, 0, rollout)
        else:
            serve = _by_hand(change, now)
            if serve > 0 and not change.force and not evals.has_clean_eval(conn, namespace, model):
                raise Conflict(
                    f"{model} has no clean eval in {namespace}: run curation eval {namespace} "
                    f"--model {model} first, start with --shadow or --rollout auto, or pass --force"
                )
            shadow, watch = change.shadow or 0, change.watch or 0
            target, reason = stage_of(serve, shadow), f"by hand ({who})"
            values = _values(model, change, serve, shadow, watch, None)
        if change.endpoint is None and model == now["serve_model"] and not change.off:
            values["endpoint"], values["key_env"] = (
                now["serve_endpoint"],
                now["serve_endpoint_key_env"],
            )
        db.set_serving(conn, namespace, **values)
        db.record_step(
            conn,
            namespace,
            model=model,
            from_percent=_percent(now),
            to_percent=0 if change.off else values["serve"],
            from_stage=_stage(now),
            to_stage=target,
            reason=reason,
            decided_by=who,
        )


def _by_hand(change: Change, now: dict[str, Any]) -> int:
    """--percent; else shadow only with --shadow; else all with a new --model; else as now."""
    if change.percent is not None:
        return change.percent
    if change.shadow is not None:
        return 0
    return 100 if change.model is not None else _percent(now)


def _values(
    model: str | None, change: Change, serve: int, shadow: int, watch: int, rollout: str | None
) -> dict[str, Any]:
    return {
        "model": model,
        "endpoint": None if model is None else change.endpoint,
        "key_env": None if model is None else change.key_env,
        "serve": serve,
        "shadow": shadow,
        "watch": watch,
        "rollout": rollout,
    }


def _percent(row: dict[str, Any]) -> int:
    return int(row["serve_percent"]) if row["serve_model"] else 0


def _stage(row: dict[str, Any]) -> str:
    if row["stage"]:
        return str(row["stage"])
    if not row["serve_model"]:
        return OFF
    return stage_of(int(row["serve_percent"]), int(row["serve_shadow_percent"]))


def state(conn: Connection, namespace: str, last: int, models_file: Any = None) -> dict[str, Any]:
    """The serving settings, the rollout, and live numbers of the served model."""
    row = db.settings(conn, namespace)
    model = row["serve_model"]
    rollout = row["rollout"] or {}
    out: dict[str, Any] = {
        "namespace": namespace,
        "model": model,
        "endpoint": row["serve_endpoint"],
        "stage": _stage(row),
        "automatic": bool(rollout),
        "stage_since": rollout.get("since"),
        "serve_percent": _percent(row),
        "shadow_percent": int(row["serve_shadow_percent"]) if model else 0,
        "watch_percent": int(row["serve_watch_percent"]) if model else 0,
        "per_minute": int(row["shadow_per_minute"]),
        "compare": row["compare"] or "exact",
        "policy": _policy(rollout.get("policy")),
    }
    if model is None:
        return out
    live = db.live(conn, namespace, model, last)
    teacher = live.get("teacher_model")
    out["live"] = {
        "last": _agreement(live["last_agreed"], live["last_samples"]),
        "hour": _agreement(live["hour_agreed"], live["hour_samples"])
        | {"failed": int(live["hour_errors"])},
        "student": {
            "model": model,
            "latency_p50_ms": _ms(live["student_p50_ms"]),
            "cost_per_1k_calls_usd": summary.cost_per_1k_calls(
                model, live["student_tokens_in"], live["student_tokens_out"], models_file
            ),
        },
        "teacher": {
            "model": teacher,
            "latency_p50_ms": _ms(live["teacher_p50_ms"]),
            "cost_per_1k_calls_usd": summary.cost_per_1k_calls(
                teacher, live["teacher_tokens_in"], live["teacher_tokens_out"], models_file
            )
            if teacher
            else None,
        },
        "tally_hour": {
            k: int(live[k])
            for k in ("student_calls", "student_failures", "background_calls", "background_dropped")
        },
    }
    return out


def _policy(stored: Any) -> dict[str, Any] | None:
    """The stored policy with every rule, defaults filled in (as the decider reads it)."""
    try:
        return Policy.from_json(stored).to_json() if stored is not None else None
    except (InvalidInput, TypeError, ValueError, AttributeError):
        return None


def _agreement(agreed: int, samples: int) -> dict[str, Any]:
    return {"agreement": round(agreed / samples, 4) if samples else None, "samples": int(samples)}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def check_compare(compare: str) -> str | None:
    """A namespace's comparator as `ns set --compare` stores it ('' clears it: exact)."""
    if compare == "":
        return None
    if not compare.strip() or "\x00" in compare:
        raise InvalidInput("--compare: use exact, json, or a command (as curation eval takes)")
    return compare
