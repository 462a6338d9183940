from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import pg
from tests.fake_openai import FakeOpenAI, Running
from tests.harness import ProxyProcess

SHARED_TIKTOKEN = Path(__file__).resolve().parents[1].parent / "shared" / "tiktoken"
if "TIKTOKEN_CACHE_DIR" not in os.environ and SHARED_TIKTOKEN.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED_TIKTOKEN)
# Tests never download models: a hub name fails at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def pg_server() -> str:
    return pg.server_url()


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    with pg.template(pg_server) as name:
        yield name


@pytest.fixture
def db_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh database at the head revision, for this test alone."""
    with pg.fresh_database(pg_server, pg_template) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A fresh empty database (no migrations applied)."""
    with pg.fresh_database(pg_server, None) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, object]]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


LOGIN_PASSWORD = "correct horse battery staple"  # make_login's logins sign in with it


@pytest.fixture
def make_login(pg_server: str, db_url: str) -> Iterator[Callable[..., str]]:
    """Real PostgreSQL logins with LOGIN_PASSWORD, in curation_curator unless
    ``curator=False``; roles are cluster-wide, so names are unique and dropped after."""
    made: list[str] = []

    def make(prefix: str = "ana", curator: bool = True) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        grant = " IN ROLE curation_curator" if curator else ""
        with pg.admin(pg_server) as c:
            c.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{LOGIN_PASSWORD}'{grant}")
        made.append(name)
        return name

    yield make
    for name in made:
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute(f"DROP OWNED BY {name}")
        with pg.admin(pg_server) as c:
            c.execute(f"DROP ROLE {name}")


EMBEDDED_STARTED = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Start the embedded server (if used) once, in a folder of this run's own, before xdist
    workers race to init it; they inherit its folder through the environment."""
    if not hasattr(config, "workerinput"):
        folder = pg.start_embedded()
        if folder is not None:
            config.stash[EMBEDDED_STARTED] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop what pytest_configure started: in the controller, after every worker has ended,
    so no PostgreSQL outlives the run (issue 11)."""
    folder = config.stash.get(EMBEDDED_STARTED, None)
    if folder is not None:
        pg.stop_embedded(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM with a chat template (tests/tinymodel.py), built
    once per session; skips the test where the training extra is missing."""
    for module in ("torch", "transformers"):
        pytest.importorskip(
            module, reason="needs the training extra: pip install 'curation[train]'"
        )
    from tests import tinymodel

    return tinymodel.build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with Running() as running:
        running.fake.url = running.url  # type: ignore[attr-defined]
        yield running.fake


@pytest.fixture
def start_proxy(
    db_url: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> Iterator[Callable[..., ProxyProcess]]:
    """Start ``curation proxy`` against this test's database and the fake upstream."""
    started: list[ProxyProcess] = []

    def start(
        spool: str = "spool", db: str | None = None, upstream: str | None = None, **env: str
    ) -> ProxyProcess:
        proc = ProxyProcess(db or db_url, upstream or fake_openai.url, tmp_path / spool, **env)  # type: ignore[attr-defined]
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()
