"""curation: turn production LLM traffic into fine-tuning data, in Postgres."""

from __future__ import annotations

__version__ = "0.1.0"
