from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from curation import config
from curation.cli.context import AppContext, pass_app


class Bounded(click.ParamType[Any]):
    """A size, count or duration flag: parsed as its environment variable is, and held
    to the same bounds (``config.BOUNDS``); a bad value is a usage error (exit 2)."""

    def __init__(self, setting: str, parse: Callable[[str], Any], name: str) -> None:
        self.setting = setting
        self.parse = parse
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return config.within(self.setting, self.parse(str(value)))
        except ValueError as exc:
            self.fail(f"{value!r} is not valid: {exc}", param, ctx)


def size(setting: str) -> Bounded:
    return Bounded(setting, config.parse_size, "size")


def seconds(setting: str) -> Bounded:
    return Bounded(setting, config.parse_seconds, "seconds")


def count(setting: str) -> Bounded:
    return Bounded(setting, config.parse_count, "count")


@click.command("proxy")
@click.option("--listen", help="HOST:PORT to listen on [env: CURATION_LISTEN; 127.0.0.1:8080].")
@click.option(
    "--upstream",
    "upstream_url",
    help="Upstream origin [env: CURATION_UPSTREAM_URL; https://api.openai.com].",
)
@click.option(
    "--default-namespace",
    help="Namespace of calls that name none [env: CURATION_DEFAULT_NAMESPACE; default]; '' records them nowhere.",
)
@click.option(
    "--create-namespaces/--no-create-namespaces",
    default=None,
    help="Create unknown namespaces on first use [env: CURATION_CREATE_NAMESPACES; on].",
)
@click.option(
    "--spool-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Spool folder [env: CURATION_SPOOL_DIR; <data dir>/spool].",
)
@click.option(
    "--spool-max-bytes",
    type=size("spool_max_bytes"),
    help="Spool cap, 1MiB to 1024GiB [env: CURATION_SPOOL_MAX_BYTES; 1GiB].",
)
@click.option(
    "--max-body-bytes",
    type=size("max_body_bytes"),
    help="Largest request body [env: CURATION_MAX_BODY_BYTES; 32MiB].",
)
@click.option(
    "--body-timeout",
    type=seconds("body_timeout"),
    help="Longest wait for a request body, s; then 408 [env: CURATION_BODY_TIMEOUT; 60].",
)
@click.option(
    "--idle-timeout",
    type=seconds("idle_timeout"),
    help="Close a client connection with no whole request head for this long, s "
    "[env: CURATION_IDLE_TIMEOUT; 75].",
)
@click.option(
    "--max-namespaces",
    type=count("max_namespaces"),
    help="Create namespaces on use only up to this many in all "
    "[env: CURATION_MAX_NAMESPACES; 100].",
)
@click.option(
    "--max-client-connections",
    type=count("max_client_connections"),
    help="Close new client connections at once (with a 503) over this many open "
    "[env: CURATION_MAX_CLIENT_CONNECTIONS; 4096].",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="Log every request [env: CURATION_ACCESS_LOG; off].",
)
@click.option(
    "--spool-fsync/--no-spool-fsync",
    default=None,
    help="fsync every capture [env: CURATION_SPOOL_FSYNC; off].",
)
@click.option(
    "--connect-timeout",
    type=seconds("upstream_connect_timeout"),
    help="Upstream connect timeout, s [env: CURATION_UPSTREAM_CONNECT_TIMEOUT; 10].",
)
@click.option(
    "--read-timeout",
    type=seconds("upstream_read_timeout"),
    help="Longest upstream silence, s [env: CURATION_UPSTREAM_READ_TIMEOUT; 600].",
)
@click.option(
    "--max-connections",
    type=count("upstream_max_connections"),
    help="Upstream pool size [env: CURATION_UPSTREAM_MAX_CONNECTIONS; 256].",
)
@click.option(
    "--recorder-stall-seconds",
    type=seconds("recorder_stall_seconds"),
    help="Restart a recorder making no progress this long [env: CURATION_RECORDER_STALL_SECONDS; 60].",
)
@click.option(
    "--student-timeout",
    type=seconds("student_timeout"),
    help="A served namespace's student must answer within this, else the teacher does "
    "[env: CURATION_STUDENT_TIMEOUT; 30].",
)
@click.option(
    "--background-concurrency",
    type=count("background_concurrency"),
    help="Shadow and watch calls in flight at once; over it a call is dropped and counted "
    "[env: CURATION_BACKGROUND_CONCURRENCY; 16].",
)
@click.option(
    "--background-timeout",
    type=seconds("background_timeout"),
    help="Longest wait for one shadow or watch call's whole answer, s "
    "[env: CURATION_BACKGROUND_TIMEOUT; 60].",
)
@click.option(
    "--rollout-decider/--no-rollout-decider",
    default=None,
    help="Take part in deciding automatic rollouts (one proxy decides at a time) "
    "[env: CURATION_ROLLOUT_DECIDER; on].",
)
@click.option(
    "--rollout-interval",
    type=seconds("rollout_interval"),
    help="Seconds between the rollout decider's looks at the numbers "
    "[env: CURATION_ROLLOUT_INTERVAL; 1].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Proxy processes sharing the port (SO_REUSEPORT), each with its own spool "
    "(<spool>/worker-<i> beyond the first) and recorder; /metrics and /readyz are per worker.",
)
@pass_app
def proxy(
    app: AppContext,
    listen: str | None,
    upstream_url: str | None,
    default_namespace: str | None,
    create_namespaces: bool | None,
    spool_dir: Path | None,
    spool_max_bytes: int | None,
    max_body_bytes: int | None,
    body_timeout: float | None,
    idle_timeout: float | None,
    max_namespaces: int | None,
    max_client_connections: int | None,
    access_log: bool | None,
    spool_fsync: bool | None,
    connect_timeout: float | None,
    read_timeout: float | None,
    max_connections: int | None,
    recorder_stall_seconds: float | None,
    student_timeout: float | None,
    background_concurrency: int | None,
    background_timeout: float | None,
    rollout_decider: bool | None,
    rollout_interval: float | None,
    workers: int,
) -> None:
    """Run the OpenAI-compatible proxy that records chat completions.

    Point clients at http://HOST:PORT/v1 (or /ns/<namespace>/v1). Every
    POST /v1/chat/completions is forwarded and recorded; other /v1 calls are
    only forwarded.
    """
    from curation.proxy.server import serve

    settings = app.settings(
        listen=listen,
        upstream_url=upstream_url,
        default_namespace=default_namespace,
        create_namespaces=create_namespaces,
        spool_dir=spool_dir,
        spool_max_bytes=spool_max_bytes,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        idle_timeout=idle_timeout,
        max_namespaces=max_namespaces,
        max_client_connections=max_client_connections,
        access_log=access_log,
        spool_fsync=spool_fsync,
        upstream_connect_timeout=connect_timeout,
        upstream_read_timeout=read_timeout,
        upstream_max_connections=max_connections,
        recorder_stall_seconds=recorder_stall_seconds,
        student_timeout=student_timeout,
        background_concurrency=background_concurrency,
        background_timeout=background_timeout,
        rollout_decider=rollout_decider,
        rollout_interval=rollout_interval,
    )
    serve(settings, workers)


COMMANDS = [proxy]
