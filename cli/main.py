"""Entry point of the ``smtpcheck`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cli.errors import EXIT_INTERRUPTED, EXIT_USAGE, err
from cli.parser import build_parser
from smtpcheck.config import ConfigError, Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smtpcheck`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        err(f"configuration error: {exc}")
        return EXIT_USAGE
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
