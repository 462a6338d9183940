"""Doctor's provider check: the fine-tuning provider takes the configured key."""

from __future__ import annotations

from curation.config import Settings
from curation.doctor.check import Check, fail, ok, warn
from curation.errors import CurationError

PROVIDER_TIMEOUT = 5.0  # seconds for the provider's models endpoint


def provider(settings: Settings) -> Check:
    """The fine-tuning provider answers its models endpoint with the configured key."""
    from curation.jobs.provider import Provider

    base = settings.openai_base_url
    if not settings.openai_api_key:
        return warn(
            "provider",
            f"OPENAI_API_KEY is not set, so {base} was not asked: set it to submit jobs with the "
            "openai backend (ignore this if you train with together or local)",
        )
    client = Provider(settings, max_retries=0)
    try:
        page = client.call(
            f"GET {base.rstrip('/')}/models",
            lambda: client.client.with_options(timeout=PROVIDER_TIMEOUT).models.list(),
        )
    except CurationError as exc:
        return fail("provider", f"{exc}; check OPENAI_API_KEY and OPENAI_BASE_URL")
    return ok("provider", f"{base} accepts the key ({len(page.data)} models listed)")
