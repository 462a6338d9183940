"""The namespaces page's token counts, which must never take the page down with them.

tiktoken downloads its encoding on first use; offline and without TIKTOKEN_CACHE_DIR
that fails, and where a network drops packets instead of refusing them it would hang
(tiktoken's download has no timeout). So each encoding loads once, in a thread of its
own: the page waits ``WAIT`` seconds at most, then shows why there is no count, and
the rest of the page works.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from curation.errors import CurationError

WAIT = 2.0  # seconds a page waits for an encoding that is still loading
MISSING = "tokenizer files missing, see README Running offline"
LOADING = "tokenizer still loading, reload in a moment"

_loads: dict[str, Future[None]] = {}
_lock = threading.Lock()


def _load(name: str, done: Future[None]) -> None:
    from curation.export import tokens  # tiktoken: only when a page counts

    try:
        tokens.encoding(name)
    except CurationError as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)


def unavailable(name: str, wait: float = WAIT) -> str | None:
    """Why ``name`` cannot count now (None: it can). A failed load is remembered until the
    server restarts: a page load does not try the download again."""
    with _lock:
        load = _loads.get(name)
        if load is None:
            load = _loads[name] = Future()
            threading.Thread(target=_load, args=(name, load), daemon=True).start()
    try:
        load.result(timeout=wait)
    except TimeoutError:
        return LOADING
    except CurationError:
        return MISSING
    return None


def count(text: str | None, model: str, models_file: Any) -> int | str | None:
    """Tokens of ``text`` as ``model`` counts them; '?' for a model without a tiktoken
    encoding; None for no text. Raises nothing for a missing encoding: see ``unavailable``."""
    from curation.export import models, tokens

    if text is None:
        return None
    try:
        info = models.lookup(model, models_file)
    except CurationError:
        return "?"
    if not info.encoding or unavailable(info.encoding) is not None:
        return "?"
    return tokens.count_prompt(text, info)


def why_not(model: str, models_file: Any) -> str | None:
    """Why ``model``'s prompts cannot be counted here (None: they can, or it has no
    tiktoken encoding, shown as '?')."""
    from curation.export import models

    try:
        info = models.lookup(model, models_file)
    except CurationError:
        return None
    return unavailable(info.encoding) if info.encoding else None
