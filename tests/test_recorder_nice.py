"""The recorder's CPU priority: a setting, checked, and never a reason not to record."""

from __future__ import annotations

import pytest

from curation import config
from curation.errors import InvalidInput
from curation.proxy import recorder


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 19), ("0", 0), ("10", 10), ("19", 19), ("20", 19), ("-5", 19), ("high", 19), ("", 19)],
)
def test_the_recorder_takes_its_niceness_from_the_environment_or_the_default(
    raw: str | None, expected: int
) -> None:
    env = {} if raw is None else {recorder.NICE_ENV: raw}
    assert recorder.niceness(env) == expected


def test_the_setting_is_checked_where_the_proxy_loads_it() -> None:
    assert config.load(env={}).recorder_nice == 19
    assert config.load(env={"CURATION_RECORDER_NICE": "0"}).recorder_nice == 0
    for bad in ("20", "-1", "x"):
        with pytest.raises((InvalidInput, ValueError)):
            config.load(env={"CURATION_RECORDER_NICE": bad})
