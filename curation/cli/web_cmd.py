"""``curation web``: the curator page, signed in by a printed link or a PostgreSQL login."""

from __future__ import annotations

import re

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.params import curator_option, who
from curation.errors import InvalidInput

HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8081`` for IPv6; port 0: any free one); no host: localhost."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8081)")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command("web")
@click.option(
    "--listen",
    help="HOST:PORT to serve on; 0.0.0.0 opens it to the network "
    "[env: CURATION_WEB_LISTEN; 127.0.0.1:8081].",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Another name the page may be reached by (a reverse proxy's); repeatable. "
    "Requests naming any other host get 403 (DNS rebinding).",
)
@click.option(
    "--allow-passwordless-logins",
    is_flag=True,
    help="Let /login sign in on a PostgreSQL that checks no password (trust/peer auth): "
    "for development and tests only, anyone could then sign in as anyone.",
)
@curator_option
@pass_app
def web_command(
    app: AppContext,
    listen: str | None,
    allow_hosts: tuple[str, ...],
    allow_passwordless_logins: bool,
    curator: str | None,
) -> None:
    """Serve the curator web page until Ctrl-C.

    Prints one line, `curation web: http://HOST:PORT/?token=TOKEN`: opening it signs
    you in as the curator (--curator, else CURATION_CURATOR, else USER). Others
    sign in at /login with their own PostgreSQL login and password; the page then
    works as that login, so its grants and the audit trail apply as in psql.
    """
    host, port = parse_listen(listen or app.settings().web_listen)
    for name in allow_hosts:
        if not HOST_NAME.fullmatch(name):
            raise InvalidInput(
                f"--allow-host {name!r} is not a host name (e.g. curate.example.com)"
            )
    app.ensure_schema()
    from curation.web import app as web_app  # aiohttp and jinja2: only for this command
    from curation.web.view import Config

    settings = app.settings()
    config = Config(
        url=app.url(),
        curator=who(app, curator),
        token=web_app.new_token(),
        idle=settings.web_session_idle,
        models_file=settings.models_file,
        host=host,
        allow_hosts=tuple(allow_hosts),
        passwordless_logins=allow_passwordless_logins,
    )
    web_app.serve(config, host, port)


COMMANDS = [web_command]
