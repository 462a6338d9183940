"""Does a model's answer agree with the curated one? exact, json, or a command."""

from __future__ import annotations

import json
import os
import signal
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
COMMAND_TIMEOUT = 60.0  # seconds one comparison may take


def command(cmd: str, timeout: float = COMMAND_TIMEOUT) -> Comparator:
    """A user command reads {"expected": ..., "actual": ...} on stdin; exit 0 means a match.

    A command the shell cannot run, that runs past ``timeout`` or that a signal
    kills fails the eval: scoring every row a mismatch would report 0% agreement
    as if the models had answered wrong. It runs in its own process group, so a
    timeout ends whatever it started too (a grandchild holding the pipes open
    would otherwise hang the eval).
    """

    def compare(expected: str, actual: str) -> bool:
        payload = command_payload(expected, actual)
        with subprocess.Popen(
            cmd,
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as proc:
            try:
                _, stderr = proc.communicate(payload, timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise InvalidInput(
                    f"--compare {cmd!r} ran past {timeout:g}s on one row; make it faster"
                ) from None
        return verdict(cmd, proc.returncode, stderr)

    return compare


def command_payload(expected: str, actual: str) -> str:
    """What a command comparator reads on stdin: each answer as data when it parses as
    JSON, else as text (eval and the proxy's live comparisons write the same)."""
    return json.dumps({"expected": _maybe_json(expected), "actual": _maybe_json(actual)})


def verdict(cmd: str, returncode: int, stderr: str) -> bool:
    """A command comparator's exit code read: 0 a match, else not; one the shell could not
    run, or a signal, is an error (scoring it a mismatch would look like 0% agreement)."""
    if returncode in CANNOT_RUN or returncode < 0:
        said = stderr.strip().splitlines()
        why = f"exit {returncode}" if returncode > 0 else f"signal {-returncode}"
        raise InvalidInput(
            f"--compare {cmd!r} cannot run ({why}{': ' + said[-1] if said else ''}); "
            "give exact, json, or a command on PATH"
        )
    return returncode == 0


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
