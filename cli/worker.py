"""``smtpcheck worker``: RQ workers for one vantage point."""

from __future__ import annotations

import argparse
import re

from cli.errors import EXIT_USAGE, err
from smtpcheck.config import Settings
from smtpcheck.contract import ALL_VANTAGES, VANTAGE_PATTERN


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from smtpcheck.redis_client import uses_sentinel
    from workers.pool import run_pool

    vantage = args.vantage or settings.vantage
    if vantage == ALL_VANTAGES or not re.fullmatch(VANTAGE_PATTERN, vantage):
        err(
            f"{vantage!r} cannot name a vantage: use letters, digits, '.', '_' and '-' "
            f"(and not {ALL_VANTAGES!r}, which means every vantage)"
        )
        return EXIT_USAGE
    if args.concurrency is not None and args.worker_class != "threads":
        err(
            f"--concurrency needs --worker-class threads "
            f"(a {args.worker_class} worker runs one check at a time)"
        )
        return EXIT_USAGE
    if not settings.redis_url:
        err("REDIS_URL is not set; using redis://127.0.0.1:6379/0")
    if args.worker_class == "fork" and uses_sentinel(settings.redis_url):
        err(
            "--worker-class fork cannot follow a redis+sentinel:// primary (RQ's forked "
            "work horse rebuilds its connection from a host and port); use simple"
        )
        return EXIT_USAGE
    if not settings.secret_key:
        err("SMTPCHECK_SECRET_KEY is not set: checks with AUTH cannot be run")
    return run_pool(
        settings,
        vantage=vantage,
        processes=args.processes,
        burst=args.burst,
        kind=args.worker_class,
        concurrency=args.concurrency,
    )
