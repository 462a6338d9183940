"""`curation serve`: show or change how the proxies serve a namespace, by hand or by rollout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.eval_cmd import checked_endpoint, endpoint_options
from curation.cli.output import dumps, emit, json_option
from curation.config import secret_from_env
from curation.errors import InvalidInput

HISTORY_ROWS = 100
HISTORY_COLUMNS = [
    "at",
    "from_stage",
    "to_stage",
    "reason",
    "agreement",
    "samples",
    "error_rate",
    "decided_by",
]
SHARE = click.IntRange(0, 100)
RATE = click.FloatRange(0, 1)
# --rollout auto's options, as Policy names them; given without it they are a mistake
POLICY_FLAGS = {
    "steps": "--steps",
    "promote_at": "--promote-at",
    "min_samples": "--min-samples",
    "demote_below": "--demote-below",
    "max_error_rate": "--max-error-rate",
}


def rollout_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--rollout auto and the policy it follows (rollout/policy.py)."""
    for option in reversed(
        [
            click.option(
                "--rollout",
                type=click.Choice(["auto"]),
                help="Start in shadow and step the share up while agreement holds, back down "
                "by itself when it drops.",
            ),
            click.option("--steps", metavar="5,25,50,100", help="The shares to step through."),
            click.option("--promote-at", type=RATE, help="Agreement to step up at [0.95]."),
            click.option(
                "--min-samples",
                type=click.IntRange(1, 1_000_000),
                help="Comparisons of a stage its agreement is taken over [200].",
            ),
            click.option(
                "--demote-below", type=RATE, help="Rolling agreement to step back at [0.90]."
            ),
            click.option(
                "--max-error-rate", type=RATE, help="Student failures to step back at [0.02]."
            ),
        ]
    ):
        command = option(command)
    return command


@click.command("serve")
@click.argument("namespace")
@click.option("--model", help="Answer NAMESPACE's calls with this (fine-tuned) model.")
@click.option("--percent", type=SHARE, help="Share of calls to serve with it, by hand [100].")
@click.option(
    "--shadow",
    type=SHARE,
    help="Share of the teacher's calls also sent to the student in the background and compared "
    "(alone: shadow only, the client always gets the teacher; with --rollout auto: below 100%% "
    "[100]).",
)
@click.option(
    "--watch-percent", type=SHARE, help="Share of the student's calls the teacher also answers [2]."
)
@rollout_options
@click.option("--off", is_flag=True, help="Stop serving: calls go to the model they name.")
@click.option(
    "--per-minute",
    type=click.IntRange(1, 1_000_000),
    help="Background (shadow, watch) calls per minute per proxy; more are dropped and counted.",
)
@click.option("--force", is_flag=True, help="Serve a model with no clean eval in this namespace.")
@click.option("--history", is_flag=True, help="Every change of share: when, why, the numbers.")
@click.option(
    "--last",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Live agreement over this many latest comparisons.",
)
@endpoint_options
@json_option
@pass_app
def serve_command(
    app: AppContext,
    /,
    namespace: str,
    endpoint: str | None,
    endpoint_key_env: str | None,
    history: bool,
    last: int,
    as_json: bool,
    **given: Any,
) -> None:
    """Show or change how the proxy serves NAMESPACE (running proxies follow within seconds).

    With --endpoint, the proxy sends the served calls to that OpenAI-compatible
    API instead of its upstream; should it fail before the client gets a byte,
    the teacher answers the original call. --shadow P compares the student on
    live traffic without touching a client's call; --rollout auto starts in
    shadow and lets the proxies step the share up and back by themselves.
    """
    from curation.db import namespaces
    from curation.db import rollout as db_rollout
    from curation.rollout import control

    change = _change(given, *checked_endpoint(endpoint, endpoint_key_env))
    if history and (change.serving or change.per_minute is not None):
        raise InvalidInput("--history only shows: give it alone")
    with app.db() as conn:
        namespaces.get(conn, namespace)
        if history:
            emit(db_rollout.history(conn, namespace, HISTORY_ROWS), as_json, HISTORY_COLUMNS)
            return
        if change.serving or change.per_minute is not None:
            control.apply(conn, namespace, change, app.settings().curator)
            _warn(namespaces.get(conn, namespace).training_system_prompt, change, namespace)
        shown = control.state(conn, namespace, last, app.settings().models_file)
    if as_json:
        click.echo(dumps(shown))
        return
    for line in describe(shown):
        click.echo(line)


def _change(given: dict[str, Any], endpoint: str | None, key_env: str | None) -> Any:
    from curation.rollout import control, policy

    model, off, rollout = given["model"], given["off"], given["rollout"]
    if endpoint is not None and model is None and not off:
        raise InvalidInput("--endpoint serves a --model: give the model name it answers to")
    if off and any(given[k] is not None for k in ("model", "percent", "shadow", "rollout")):
        raise InvalidInput(
            "--off stops serving: give it without --model, --percent, --shadow, --rollout"
        )
    stray = [flag for key, flag in POLICY_FLAGS.items() if given[key] is not None]
    if stray and rollout is None:
        raise InvalidInput(f"{stray[0]} is a rule of --rollout auto: add --rollout auto")
    if rollout is not None and given["percent"] is not None:
        raise InvalidInput("--rollout auto sets the share itself: leave out --percent")
    if rollout is not None and model is None:
        raise InvalidInput("--rollout auto needs the student: give --model")
    rules = None
    if rollout is not None:
        chosen = {k: given[k] for k in POLICY_FLAGS if given[k] is not None}
        if "steps" in chosen:
            chosen["steps"] = policy.parse_steps(chosen["steps"])
        for key, name in (("watch_percent", "watch_percent"), ("shadow", "shadow_percent")):
            if given[key] is not None:
                chosen[name] = given[key]
        rules = policy.Policy(**chosen)
    return control.Change(
        model=model,
        endpoint=endpoint,
        key_env=key_env,
        percent=given["percent"],
        shadow=given["shadow"],
        watch=given["watch_percent"],
        rollout=rules,
        off=off,
        per_minute=given["per_minute"],
        force=given["force"],
    )


def _warn(prompt: str | None, change: Any, namespace: str) -> None:
    if change.off or not change.serving:
        return
    if not prompt:
        click.echo(
            f"warning: {namespace} has no training system prompt; served calls get none", err=True
        )
    if change.key_env and secret_from_env(change.key_env) is None:
        click.echo(
            f"warning: {change.key_env} is not set here; the proxy needs it in its environment",
            err=True,
        )


def describe(s: dict[str, Any]) -> list[str]:
    """`curation serve NS` in a few lines: stage, shares, live agreement, side by side."""
    ns = s["namespace"]
    if s["model"] is None:
        return [f"{ns}: not served; calls go to the model they name"]
    where = s["endpoint"] or "the upstream"
    how = "automatic rollout" if s["automatic"] else "set by hand"
    lines = [
        f"{ns}: served by {s['model']} at {where} for {s['serve_percent']}% of calls "
        f"(stage {s['stage']}, {how}{', since ' + s['stage_since'] if s['stage_since'] else ''})",
        f"  shadow {s['shadow_percent']}% of the teacher's calls, watch {s['watch_percent']}% of "
        f"the student's; budget {s['per_minute']} background calls/min per proxy; "
        f"compared {s['compare']}",
    ]
    if s["policy"]:
        p = s["policy"]
        lines.append(
            f"  rollout: steps {','.join(map(str, p['steps']))}, promote at {p['promote_at']} over "
            f"{p['min_samples']}, demote below {p['demote_below']} over the last {p['window']} "
            f"or above {p['max_error_rate']} errors"
        )
    live = s["live"]
    lines.append(
        f"  agreement: {_share(live['last'])} over the last {live['last']['samples']}, "
        f"{_share(live['hour'])} over the last hour ({live['hour']['samples']} compared, "
        f"{live['hour']['failed']} failed)"
    )
    for side in ("student", "teacher"):
        m = live[side]
        cost = m["cost_per_1k_calls_usd"]
        lines.append(
            f"  {side}: {m['model'] or '?'}: p50 {_or(m['latency_p50_ms'], ' ms')}, "
            f"{'$' + format(cost, 'g') if cost is not None else '? (price unknown)'} per 1k calls"
        )
    t = live["tally_hour"]
    lines.append(
        f"  last hour: student calls {t['student_calls']} ({t['student_failures']} failed), "
        f"background calls {t['background_calls']}, dropped over budget {t['background_dropped']}"
    )
    return lines


def _share(a: dict[str, Any]) -> str:
    return "-" if a["agreement"] is None else f"{a['agreement']:.3f}"


def _or(value: Any, unit: str) -> str:
    return "-" if value is None else f"{value:g}{unit}"


COMMANDS = [serve_command]
