from __future__ import annotations

from pathlib import Path

import click

from curation.cli.context import AppContext, pass_app
from curation.config import parse_size


class Size(click.ParamType[int]):
    """'32MiB', '1G', '500k' or plain bytes."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 32MiB, 1G, 500k, 4096)", param, ctx)


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
    "--spool-max-bytes", type=Size(), help="Spool cap, e.g. 1GiB [env: CURATION_SPOOL_MAX_BYTES]."
)
@click.option(
    "--max-body-bytes", help="Largest request body, e.g. 32MiB [env: CURATION_MAX_BODY_BYTES]."
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
    type=float,
    help="Upstream connect timeout, s [env: CURATION_UPSTREAM_CONNECT_TIMEOUT; 10].",
)
@click.option(
    "--read-timeout",
    type=float,
    help="Longest upstream silence, s [env: CURATION_UPSTREAM_READ_TIMEOUT; 600].",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    help="Upstream pool size [env: CURATION_UPSTREAM_MAX_CONNECTIONS; 256].",
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
    access_log: bool | None,
    spool_fsync: bool | None,
    connect_timeout: float | None,
    read_timeout: float | None,
    max_connections: int | None,
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
        access_log=access_log,
        spool_fsync=spool_fsync,
        upstream_connect_timeout=connect_timeout,
        upstream_read_timeout=read_timeout,
        upstream_max_connections=max_connections,
    )
    serve(settings)


COMMANDS = [proxy]
