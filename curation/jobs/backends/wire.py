"""Reading a provider's answers: total functions over whatever JSON arrives.

A provider's SDK does not validate what it hands back, so a job or an event
may carry any JSON in any field; these turn it into the plain values our
records hold, or into the one UpstreamError.
"""

from __future__ import annotations

from typing import Any

from curation.errors import UpstreamError


def job_id(job: Any, provider: str) -> str:
    """The job's id, which every answer about a job must carry."""
    value = job.get("id") if isinstance(job, dict) else None
    if not isinstance(value, str) or not value:
        raise UpstreamError(f"{provider} answered a job without an id: {str(job)[:200]}")
    return value


def integer(value: Any) -> int | None:
    """A count as an int, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if abs(value) < 2**63 else None


def number(value: Any) -> float:
    """A timestamp or a measure as a float; 0.0 when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if abs(value) < float("inf") else 0.0


def text(value: Any, default: str = "") -> str:
    """A message as one line of text."""
    if value is None:
        return default
    return " ".join(str(value).split()) or default


def mapping(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}
