"""The only module that reads the environment.

Every setting has an environment variable and a CLI flag; the CLI builds a
``Settings`` with ``load(overrides)`` and passes it down explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from curation.errors import InvalidInput

MiB = 1024 * 1024


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("curation", appauthor=False))


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    upstream_url: str = "https://api.openai.com"
    listen: str = "127.0.0.1:8080"
    default_namespace: str = "default"
    create_namespaces: bool = True
    spool_dir: Path | None = None
    spool_max_bytes: int = 1024 * MiB
    spool_fsync: bool = False
    max_body_bytes: int = 32 * MiB
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    upstream_max_connections: int = 256
    proxy_keys: tuple[str, ...] = ()
    access_log: bool = False
    log_level: str = "INFO"
    models_file: Path | None = None
    curator: str = "unknown"
    editor: str | None = None

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
            elif f.name == "openai_api_key":
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
    "CURATION_UPSTREAM_URL": ("upstream_url", str),
    "CURATION_LISTEN": ("listen", str),
    "CURATION_DEFAULT_NAMESPACE": ("default_namespace", str),
    "CURATION_CREATE_NAMESPACES": ("create_namespaces", "bool"),
    "CURATION_SPOOL_DIR": ("spool_dir", Path),
    "CURATION_SPOOL_MAX_BYTES": ("spool_max_bytes", "size"),
    "CURATION_SPOOL_FSYNC": ("spool_fsync", "bool"),
    "CURATION_MAX_BODY_BYTES": ("max_body_bytes", "size"),
    "CURATION_UPSTREAM_CONNECT_TIMEOUT": ("upstream_connect_timeout", float),
    "CURATION_UPSTREAM_READ_TIMEOUT": ("upstream_read_timeout", float),
    "CURATION_UPSTREAM_MAX_CONNECTIONS": ("upstream_max_connections", int),
    "CURATION_PROXY_KEYS": ("proxy_keys", "list"),
    "CURATION_ACCESS_LOG": ("access_log", "bool"),
    "CURATION_LOG_LEVEL": ("log_level", str),
    "CURATION_MODELS_FILE": ("models_file", Path),
    "USER": ("curator", str),
    "CURATION_CURATOR": ("curator", str),
    "EDITOR": ("editor", str),
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
        values[name] = _parse(var, raw, parser)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values)


def _parse(var: str, raw: str, parser: Any) -> Any:
    try:
        if parser == "bool":
            return parse_bool(raw)
        if parser == "size":
            return parse_size(raw)
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


def parse_size(raw: str) -> int:
    """'32MiB', '1G', '500k' or plain bytes."""
    text = raw.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def mask_secret(value: str | None) -> str:
    if not value:
        return "(unset)"
    return "****" + value[-4:] if len(value) >= 12 else "****"


def mask_url(url: str) -> str:
    """Hide the password of a database URL or key=value conninfo."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1****", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:****@{netloc[-1]}"))
