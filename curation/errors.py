"""The one exception tree of curation.

    CurationError                 a user-facing failure: one line, an exit code
     +-- InvalidInput             bad name, bad flag value, bad file (exit 2)
     |    +-- TooFewExamples      a dataset OpenAI would refuse (exit 11)
     |    +-- RowRefused          PostgreSQL refused a captured row's data (the writer sets it aside)
     +-- NotFound                 unknown namespace, row or job (exit 3)
     +-- DatabaseUnavailable      cannot connect (exit 4)
     +-- SchemaOutdated           migrations pending (exit 5)
     +-- PermissionDenied         the database login lacks a privilege (exit 6)
     +-- UpstreamError            the model provider failed or refused, a job failed (exit 12)
     +-- Conflict                 the state forbids it: wrong state (exit 7)
          +-- Busy                another run holds the namespace's lock (exit 13)

Each boundary (database, HTTP, SDK) translates what it catches into one of
these; the CLI prints the message and exits with ``exit_code``. Anything
else escaping is a bug and may show a traceback.
"""

from __future__ import annotations


class CurationError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InvalidInput(CurationError):
    exit_code = 2


class NotFound(CurationError):
    exit_code = 3


class RowRefused(InvalidInput):
    pass


class DatabaseUnavailable(CurationError):
    exit_code = 4


class SchemaOutdated(CurationError):
    exit_code = 5


class PermissionDenied(CurationError):
    exit_code = 6


class TooFewExamples(InvalidInput):
    exit_code = 11


class UpstreamError(CurationError):
    exit_code = 12


class Conflict(CurationError):
    exit_code = 7


class Busy(Conflict):
    exit_code = 13


NOTHING_NEW = 10  # exit code of `retrain` when the dataset equals the last job's
PII_REFUSED = 14  # exit code of an export (or retrain) that --pii refuse stopped
