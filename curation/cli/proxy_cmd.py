from __future__ import annotations

from pathlib import Path

import click

from curation.cli.context import AppContext, pass_app
from curation.config import parse_size


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
@click.option("--spool-max-bytes", help="Spool cap, e.g. 1GiB [env: CURATION_SPOOL_MAX_BYTES].")
@click.option(
    "--max-body-bytes", help="Largest request body, e.g. 32MiB [env: CURATION_MAX_BODY_BYTES]."
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="Log every request [env: CURATION_ACCESS_LOG; off].",
)
@pass_app
def proxy(
    app: AppContext,
    listen: str | None,
    upstream_url: str | None,
    default_namespace: str | None,
    create_namespaces: bool | None,
    spool_dir: Path | None,
    spool_max_bytes: str | None,
    max_body_bytes: str | None,
    access_log: bool | None,
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
        spool_max_bytes=parse_size(spool_max_bytes) if spool_max_bytes else None,
        max_body_bytes=parse_size(max_body_bytes) if max_body_bytes else None,
        access_log=access_log,
    )
    serve(settings)


COMMANDS = [proxy]
