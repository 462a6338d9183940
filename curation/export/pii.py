"""Personal data in training examples: found, counted, masked or redacted. Pure.

``export --pii report|redact|refuse`` runs ``scan`` over every example: each
string of its messages (system, user, assistant and tool turns, DPO outputs
too), its tool-call arguments and its tool definitions (descriptions, enums,
defaults). Only the structure's roles, ids and names are passed over: inside a
JSON answer or tool arguments a key named ``id`` or ``name`` is data. What counts as personal data, and how each
kind is told from look-alikes, is ``pii_detect``'s (``find``).

``redact`` puts a typed placeholder (``<EMAIL_1>``) in place of each value,
the same value getting the same placeholder everywhere in the example. A
string that holds a JSON object or array (a JSON answer, tool arguments) is
redacted inside its string values, so it stays valid JSON.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

# find and DEFAULT_REGION are read as pii.find, pii.DEFAULT_REGION (export, tests)
from curation.export.pii_detect import DEFAULT_REGION as DEFAULT_REGION
from curation.export.pii_detect import KINDS, Found, maybe
from curation.export.pii_detect import find as find

MODES = ("report", "redact", "refuse")
# Keys of the example's own structure (messages, tool calls) whose values are
# identifiers; inside a JSON answer, tool arguments or tool definitions none is skipped.
SKIPPED_KEYS = frozenset({"role", "type", "id", "tool_call_id", "name"})
NOTHING_SKIPPED: frozenset[str] = frozenset()
MAX_SHOWN = 3  # masked samples kept per row for the report


# -- examples ---------------------------------------------------------------


@dataclass
class Redactor:
    """One example's placeholders: the same value -> the same ``<KIND_n>``."""

    region: str | None = DEFAULT_REGION
    redact: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    masked: list[str] = field(default_factory=list)
    _names: dict[tuple[str, str], str] = field(default_factory=dict)

    def text(self, value: str) -> str:
        """``value`` with its personal data counted (and, when redacting, replaced)."""
        found = find(value, self.region)
        if not found:
            return value
        parts, pos = [], 0
        for f in found:
            self.counts[f.kind] += 1
            if len(self.masked) < MAX_SHOWN:
                self.masked.append(mask(f))
            parts += [value[pos : f.start], self._placeholder(f)]
            pos = f.end
        return "".join([*parts, value[pos:]]) if self.redact else value

    def _placeholder(self, f: Found) -> str:
        key = (f.kind, _normal(f))
        if key not in self._names:
            n = sum(1 for kind, _ in self._names if kind == f.kind) + 1
            self._names[key] = f"<{f.kind.upper()}_{n}>"
        return self._names[key]

    def string(self, value: str) -> str:
        """A string that may hold JSON (an answer, tool arguments): redacted inside it."""
        stripped = value.lstrip()
        if stripped[:1] in ("{", "["):
            if "\\" not in value and not maybe(value):
                return value  # its values and keys are its substrings: nothing in them either
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                return self.text(value)
            walked = self.walk(parsed, None, NOTHING_SKIPPED)  # its keys are data
            if walked is parsed or walked == parsed:
                return value
            return orjson.dumps(walked).decode()
        return self.text(value)

    def walk(self, value: Any, key: str | None = None, skip: frozenset[str] = SKIPPED_KEYS) -> Any:
        """``value`` with every string scanned but the message structure's roles, ids and
        names (``skip``): inside a JSON answer or tool arguments, and in tool definitions
        (written to the files too), a key named ``id`` or ``name`` may hold anything."""
        if key in skip:
            return value
        if key == "tools":
            skip = NOTHING_SKIPPED
        if not self.redact:
            if isinstance(value, str) and key in ("content", "arguments"):
                self.string(value)
            else:
                self._visit(value, skip)
            return value
        if isinstance(value, str):
            return self.string(value) if key in ("content", "arguments") else self.text(value)
        if isinstance(value, list):
            return [self.walk(v, None, skip) for v in value]
        if isinstance(value, dict):
            # a key like "content" holds nothing; one like "jane@example.org" may
            return {
                k if k.isidentifier() else self.text(k): self.walk(v, k, skip)
                for k, v in value.items()
            }
        if isinstance(value, int) and not isinstance(value, bool) and value > 10**12:
            digits = str(value)  # a card number written as a JSON number: a placeholder string
            redacted = self.text(digits)
            return redacted if redacted != digits else value
        return value

    def _visit(self, value: Any, skip: frozenset[str]) -> None:
        """``walk`` for a report: the same strings in the same order, nothing rebuilt."""
        if isinstance(value, dict):
            for k, v in value.items():
                if k in skip:
                    continue  # an identifier: walk neither scans it nor its value
                if not k.isidentifier():
                    self.text(k)
                if isinstance(v, str) and k in ("content", "arguments"):
                    self.string(v)
                elif isinstance(v, str):
                    self.text(v)
                else:
                    self._visit(v, NOTHING_SKIPPED if k == "tools" else skip)
        elif isinstance(value, list):
            for v in value:
                self._visit(v, skip)
        elif isinstance(value, str):
            self.text(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value > 10**12:
            self.text(str(value))


def scan(
    example: dict[str, Any],
    *,
    redact: bool,
    region: str | None = DEFAULT_REGION,
    clean: Redactor | None = None,
) -> tuple[dict[str, Any], Redactor]:
    """The example (redacted when asked) and what was found in it. ``clean``: a Redactor
    of the same region and mode that found nothing yet, used instead of a new one."""
    r = clean or Redactor(region=region, redact=redact)
    walked = r.walk(example)
    return (walked if redact else example), r


def nothing_in(texts: Iterable[str]) -> bool:
    """True when ``scan`` finds nothing in an example whose only strings (but roles) are
    these texts, told by one pre-check over them all: joined by a newline, which no gate
    of ``maybe`` matches nor looks across, so a gate matching in one text matches in the
    joined one. A text with a backslash may be JSON with escapes, read decoded: not here."""
    joined = "\n".join(texts)
    return "\\" not in joined and not maybe(joined)


def _normal(f: Found) -> str:
    """The value as compared for 'the same value': case and separators do not count."""
    if f.kind in ("phone", "card", "iban"):
        return re.sub(r"[^0-9A-Za-z+]", "", f.value).upper()
    return f.value.lower() if f.kind == "email" else f.value


def mask(f: Found) -> str:
    """A value as a report may show it: never whole (``j***@e***.com``, ``**** 1111``)."""
    v = f.value
    if f.kind == "email":
        local, _, domain = v.partition("@")
        tld = domain.rsplit(".", 1)[-1]
        return f"{local[:1]}***@{domain[:1]}***.{tld}"
    if f.kind == "card":
        return "**** " + re.sub(r"\D", "", v)[-4:]
    if f.kind == "secret":
        return f"{v[:4]}***"
    return f"{v[:2]}***{v[-2:]}" if len(v) >= 8 else "***"


# -- an export's tally ------------------------------------------------------

LISTED_ROWS = 1000  # rows the manifest names; the counts cover them all
SHOWN_ROWS = 20  # rows the export's summary names


@dataclass
class Tally:
    """What an export (or one chunk of it) found: counts per kind and the rows."""

    counts: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_count: int = 0
    # the last example's Redactor while it found nothing: most examples need no new one
    _clean: Redactor | None = field(default=None, repr=False, compare=False)

    def scan(
        self, row_id: int, example: dict[str, Any], mode: str, region: str | None
    ) -> dict[str, Any]:
        """The example to write (redacted in redact mode), its findings counted."""
        redact = mode == "redact"
        clean = self._clean
        if clean is not None and (clean.region, clean.redact) != (region, redact):
            clean = None
        out, r = scan(example, redact=redact, region=region, clean=clean)
        self._clean = None if r.counts else r
        if r.counts:
            self.counts.update(r.counts)
            self.row_count += 1
            if len(self.rows) < LISTED_ROWS:
                entry: dict[str, Any] = {"id": row_id, "kinds": dict(sorted(r.counts.items()))}
                if mode == "report":  # redacted files must not have them back in the manifest
                    entry["masked"] = r.masked
                self.rows.append(entry)
        return out

    def merge(self, other: Tally) -> None:
        self.counts.update(other.counts)
        self.row_count += other.row_count
        self.rows += other.rows[: LISTED_ROWS - len(self.rows)]

    def manifest(self, mode: str, region: str | None) -> dict[str, Any]:
        return {
            "mode": mode,
            "region": region,
            "rows": self.row_count,
            "counts": {k: self.counts[k] for k in KINDS if self.counts[k]},
            "listed": self.rows,
        }

    def kinds(self) -> str:
        """``email 2, card 1``"""
        return ", ".join(f"{k} {self.counts[k]}" for k in KINDS if self.counts[k])

    def refusal(self) -> str:
        ids = ", ".join(str(r["id"]) for r in self.rows[:SHOWN_ROWS])
        return (
            f"export refused (--pii refuse): personal data in {self.row_count} rows "
            f"({self.kinds()}; rows {ids}{'...' if self.row_count > SHOWN_ROWS else ''}); "
            "nothing written: exclude or correct them, or export with --pii redact"
        )


def report_lines(found: dict[str, Any] | None) -> list[str]:
    """The export summary's lines on personal data (values masked, never whole)."""
    if not found:
        return []
    if not found["rows"]:
        return [f"pii ({found['mode']}): none found"]
    kinds = ", ".join(f"{k} {n}" for k, n in found["counts"].items())
    verb = "redacted" if found["mode"] == "redact" else "found"
    lines = [f"pii ({found['mode']}): {verb} {kinds} in {found['rows']} rows"]
    for r in found["listed"][:SHOWN_ROWS]:
        kinds = ", ".join(f"{k} {n}" for k, n in r["kinds"].items())
        masked = f": {', '.join(r['masked'])}" if r.get("masked") else ""
        lines.append(f"  row {r['id']}: {kinds}{masked}")
    if found["rows"] > SHOWN_ROWS:
        lines.append(f"  and {found['rows'] - SHOWN_ROWS} more rows (see manifest.json)")
    return lines
