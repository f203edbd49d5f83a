"""Exit statuses, the two errors a command reports, and how it reports them."""

from __future__ import annotations

import sys
from collections.abc import Callable

PROG = "smtpcheck"

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class UsageError(Exception):
    """Bad input: reported on stderr, exit status 2."""


class Unreachable(Exception):
    """The service could not be reached or could not serve: exit status 3."""


def reported(command: Callable[[], int]) -> int:
    """Run ``command``; a UsageError or Unreachable is said on stderr, as its exit status."""
    try:
        return command()
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        err(str(exc))
        return EXIT_UNREACHABLE
