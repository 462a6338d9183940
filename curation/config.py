"""The only module that reads the environment.

Every setting has an environment variable and a CLI flag; the CLI builds a
``Settings`` with ``load(overrides)`` and passes it down explicitly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from curation.errors import InvalidInput

MiB = 1024 * 1024


def default_data_dir() -> Path:
    import platformdirs  # tempfile, shutil, bz2, lzma: not for `curation --help`

    return Path(platformdirs.user_data_dir("curation", appauthor=False))


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    together_api_key: str | None = None
    together_base_url: str = "https://api.together.ai"
    upstream_url: str = "https://api.openai.com"
    listen: str = "127.0.0.1:8080"
    default_namespace: str = "default"
    create_namespaces: bool = True
    spool_dir: Path | None = None
    spool_max_bytes: int = 1024 * MiB
    spool_fsync: bool = False
    max_body_bytes: int = 32 * MiB
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    max_namespaces: int = 100
    max_client_connections: int = 4096
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    upstream_max_connections: int = 256
    student_timeout: float = 30.0
    background_concurrency: int = 16  # shadow/watch calls in flight per proxy; over it: dropped
    background_timeout: float = 60.0  # one shadow/watch call, from send to its whole answer
    recorder_stall_seconds: float = 60.0
    # the recorder's CPU priority (os.nice): 19 lets requests win a busy CPU, the spool
    # absorbing the backlog; 0 records at the proxy's priority (see the README)
    recorder_nice: int = 19
    rollout_decider: bool = True  # take part in deciding automatic rollouts (one decides at a time)
    rollout_interval: float = 1.0  # seconds between the decider's ticks
    proxy_keys: tuple[str, ...] = ()
    access_log: bool = False
    fast_lane: bool = True  # proxy/fastlane.py: the common recorded call below aiohttp
    log_level: str = "INFO"
    models_file: Path | None = None
    curator: str = "unknown"
    editor: str | None = None
    web_listen: str = "127.0.0.1:8081"  # curation web
    web_session_idle: float = 8 * 3600.0  # a web page session ends after this long unused

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"

    def masked(self) -> dict[str, Any]:
        """The settings as ``curation config`` prints them: secrets hidden."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "database_url":
                value = mask_url(value) if value else "(unset: embedded PostgreSQL)"
            elif f.name in ("openai_api_key", "together_api_key"):
                value = mask_secret(value)
            elif f.name == "proxy_keys":
                value = [mask_secret(k) for k in value]
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        out["effective_spool_dir"] = str(self.effective_spool_dir)
        return out


# env var -> (field, parser)
ENV: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("database_url", str),
    "CURATION_DATA_DIR": ("data_dir", Path),
    "OPENAI_API_KEY": ("openai_api_key", str),
    "OPENAI_BASE_URL": ("openai_base_url", str),
    "TOGETHER_API_KEY": ("together_api_key", str),
    "TOGETHER_BASE_URL": ("together_base_url", str),
    "CURATION_UPSTREAM_URL": ("upstream_url", str),
    "CURATION_LISTEN": ("listen", str),
    "CURATION_DEFAULT_NAMESPACE": ("default_namespace", str),
    "CURATION_CREATE_NAMESPACES": ("create_namespaces", "bool"),
    "CURATION_SPOOL_DIR": ("spool_dir", Path),
    "CURATION_SPOOL_MAX_BYTES": ("spool_max_bytes", "size"),
    "CURATION_SPOOL_FSYNC": ("spool_fsync", "bool"),
    "CURATION_MAX_BODY_BYTES": ("max_body_bytes", "size"),
    "CURATION_BODY_TIMEOUT": ("body_timeout", "seconds"),
    "CURATION_IDLE_TIMEOUT": ("idle_timeout", "seconds"),
    "CURATION_MAX_NAMESPACES": ("max_namespaces", "count"),
    "CURATION_MAX_CLIENT_CONNECTIONS": ("max_client_connections", "count"),
    "CURATION_UPSTREAM_CONNECT_TIMEOUT": ("upstream_connect_timeout", "seconds"),
    "CURATION_UPSTREAM_READ_TIMEOUT": ("upstream_read_timeout", "seconds"),
    "CURATION_UPSTREAM_MAX_CONNECTIONS": ("upstream_max_connections", "count"),
    "CURATION_STUDENT_TIMEOUT": ("student_timeout", "seconds"),
    "CURATION_BACKGROUND_CONCURRENCY": ("background_concurrency", "count"),
    "CURATION_BACKGROUND_TIMEOUT": ("background_timeout", "seconds"),
    "CURATION_RECORDER_STALL_SECONDS": ("recorder_stall_seconds", "seconds"),
    "CURATION_RECORDER_NICE": ("recorder_nice", "count"),
    "CURATION_ROLLOUT_DECIDER": ("rollout_decider", "bool"),
    "CURATION_ROLLOUT_INTERVAL": ("rollout_interval", "seconds"),
    "CURATION_PROXY_KEYS": ("proxy_keys", "list"),
    "CURATION_ACCESS_LOG": ("access_log", "bool"),
    "CURATION_FAST_LANE": ("fast_lane", "bool"),
    "CURATION_LOG_LEVEL": ("log_level", "level"),
    "CURATION_MODELS_FILE": ("models_file", Path),
    "USER": ("curator", str),
    "CURATION_CURATOR": ("curator", str),
    "EDITOR": ("editor", str),
    "CURATION_WEB_LISTEN": ("web_listen", str),
    "CURATION_WEB_SESSION_IDLE": ("web_session_idle", "seconds"),
    "VISUAL": ("editor", str),
}


def load(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then CLI ``overrides`` (None values ignored)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var, (name, parser) in ENV.items():
        raw = env.get(var)
        if raw is None or (raw == "" and name != "default_namespace"):
            continue
        values[name] = _parse(var, raw, parser, name)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values)


def _parse(var: str, raw: str, parser: Any, name: str = "") -> Any:
    try:
        if name in BOUNDS:  # parse, then check the bounds of the setting
            return within(name, _parse(var, raw, parser))
        if parser == "count":
            return parse_count(raw)
        if parser == "bool":
            return parse_bool(raw)
        if parser == "size":
            return parse_size(raw)
        if parser == "level":
            return parse_level(raw)
        if parser == "seconds":
            return parse_seconds(raw)
        if parser == "list":
            return tuple(k.strip() for k in raw.split(",") if k.strip())
        return parser(raw)
    except ValueError as exc:
        raise InvalidInput(f"{var}={raw!r} is not valid: {exc}") from exc


def parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected on/off, true/false, 1/0")


def parse_seconds(raw: str) -> float:
    seconds = float(raw)
    if not 0 < seconds < float("inf"):
        raise ValueError("expected a number of seconds above 0")
    return seconds


def secret_from_env(var: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of the variable a setting names (a student endpoint's key), if set."""
    return (os.environ if env is None else env).get(var) or None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def parse_size(raw: str) -> int:
    """'32MiB', '1G', '500k' or plain bytes."""
    text = raw.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    try:
        if text and text[-1] in units:
            scaled = float(text[:-1]) * units[text[-1]]
            if math.isfinite(scaled):
                return int(scaled)
        else:
            return int(text)
    except ValueError:
        pass
    raise ValueError("expected a size such as 32MiB, 1G, 500k or 4096")


def parse_count(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None


DAY = 86400.0
# The least and greatest value of every size, count and duration setting of the proxy,
# checked where each is parsed (here for the environment, by its click type for a flag):
# out of them the proxy misbehaves (a negative spool cap spun its event loop forever).
BOUNDS: dict[str, tuple[float, float]] = {
    "spool_max_bytes": (MiB, 1024 * 1024 * MiB),
    "max_body_bytes": (1024, 1024 * MiB),
    "body_timeout": (0.1, DAY),
    "idle_timeout": (0.1, DAY),
    "max_namespaces": (1, 100_000),
    "max_client_connections": (1, 1_000_000),
    "upstream_connect_timeout": (0.001, DAY),
    "upstream_read_timeout": (0.001, DAY),
    "upstream_max_connections": (1, 100_000),
    "student_timeout": (0.01, DAY),
    "background_concurrency": (1, 100_000),
    "background_timeout": (0.01, DAY),
    "recorder_stall_seconds": (1.0, DAY),
    "recorder_nice": (0, 19),
    "rollout_interval": (0.01, 3600.0),
    "web_session_idle": (60.0, 30 * DAY),
}


def within(name: str, value: Any) -> Any:
    """``value`` if it lies in the bounds of the setting ``name``; else a ValueError naming them."""
    low, high = BOUNDS[name]
    if not low <= value <= high:  # NaN is in no bounds
        unit = " seconds" if isinstance(value, float) else ""
        raise ValueError(f"expected {_shown(name, low)} to {_shown(name, high)}{unit}")
    return value


def _shown(name: str, value: float) -> str:
    if name.endswith("_bytes"):
        for unit, size in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
            if value >= size and value % size == 0:
                return f"{int(value // size)}{unit}"
    return f"{value:g}"


def mask_secret(value: str | None) -> str:
    if not value:
        return "(unset)"
    return "****" + value[-4:] if len(value) >= 12 else "****"


_SECRET_PARAMS = ("password", "sslpassword")
# password=... or sslpassword=... in a key=value conninfo: a quoted value (with \' escapes) or a word
_CONNINFO_SECRET = re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def mask_url(url: str) -> str:
    """Hide every password of a database URL or key=value conninfo.

    libpq takes one in the user part (``u:X@``), in the query (``?password=X``,
    ``?sslpassword=X``, keys possibly percent-encoded) or as ``password=X``.
    """
    if not _URL_SCHEME.match(url):
        return _CONNINFO_SECRET.sub(r"\1****", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparseable URL)"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:****@{netloc.rsplit('@', 1)[-1]}"
    query = "&".join(_mask_param(p) for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _mask_param(pair: str) -> str:
    key, eq, _ = pair.partition("=")
    return f"{key}=****" if eq and unquote(key).strip().lower() in _SECRET_PARAMS else pair
