"""Exit statuses, the two errors a command reports, and how it reports them."""

from __future__ import annotations

import sys

PROG = "smtpcheck"

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class UsageError(Exception):
    """Bad input: reported on stderr, exit status 2."""


class Unreachable(Exception):
    """The service could not be reached or could not serve: exit status 3."""
