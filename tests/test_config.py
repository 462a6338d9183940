from __future__ import annotations

import pytest

from curation import config
from curation.errors import InvalidInput


def test_env_then_overrides() -> None:
    s = config.load(
        {"listen": "0.0.0.0:9000"},
        env={"CURATION_LISTEN": "127.0.0.1:1", "CURATION_SPOOL_MAX_BYTES": "2MiB"},
    )
    assert s.listen == "0.0.0.0:9000"
    assert s.spool_max_bytes == 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("raw", "want"), [("123", 123), ("1k", 1024), ("32MiB", 32 << 20), ("1G", 1 << 30)]
)
def test_sizes(raw: str, want: int) -> None:
    assert config.parse_size(raw) == want


def test_mask_keyword_conninfo() -> None:
    assert config.mask_url("host=db password=hunter2 user=x") == "host=db password=**** user=x"


def test_bool_env_rejects_garbage() -> None:
    with pytest.raises(InvalidInput):
        config.load(env={"CURATION_SPOOL_FSYNC": "maybe"})


def test_empty_default_namespace_means_none() -> None:
    assert config.load(env={"CURATION_DEFAULT_NAMESPACE": ""}).default_namespace == ""
