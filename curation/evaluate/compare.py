"""Does a model's answer agree with the curated one? exact, json, or a command."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from curation.errors import InvalidInput

Comparator = Callable[[str, str], bool]


def exact(expected: str, actual: str) -> bool:
    """Equal once whitespace runs are folded."""
    return " ".join(expected.split()) == " ".join(actual.split())


def as_json(expected: str, actual: str) -> bool:
    """Equal as data: key order and spacing do not matter; unparseable never matches."""
    try:
        return bool(json.loads(expected) == json.loads(actual))
    except ValueError:
        return False


CANNOT_RUN = (126, 127)  # the shell's exit codes for "not executable" and "not found"


def command(cmd: str) -> Comparator:
    """A user command reads {"expected": ..., "actual": ...} on stdin; exit 0 means a match.

    A command the shell cannot run fails the eval: scoring every row a mismatch
    would report 0% agreement as if the models had answered wrong.
    """

    def compare(expected: str, actual: str) -> bool:
        payload = json.dumps({"expected": _maybe_json(expected), "actual": _maybe_json(actual)})
        try:
            done = subprocess.run(
                cmd, shell=True, input=payload, text=True, capture_output=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            return False
        if done.returncode in CANNOT_RUN:
            said = done.stderr.strip().splitlines()
            raise InvalidInput(
                f"--compare {cmd!r} cannot run (exit {done.returncode}"
                f"{': ' + said[-1] if said else ''}); give exact, json, or a command on PATH"
            )
        return done.returncode == 0

    return compare


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def resolve(name: str) -> Comparator:
    if name == "exact":
        return exact
    if name == "json":
        return as_json
    if not name.strip():
        raise InvalidInput("--compare: use exact, json, or a command")
    return command(name)
