"""``smtpcheck api``: the gunicorn launcher."""

from __future__ import annotations

import argparse
import os
import sys

from cli.errors import EXIT_OK
from smtpcheck.config import Settings


def default_api_workers() -> int:
    """gunicorn processes: one per core, at least two (threads cover the waiting)."""
    return max(2, min(os.cpu_count() or 1, 8))


def gunicorn_argv(bind: str, workers: int, threads: int, log_level: str) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "gthread",
        "--threads", str(threads),
        "--workers", str(workers),
        "--bind", bind,
        "--no-control-socket",
        "--config", "python:service.server",
        "--log-level", log_level.lower(),
        "--error-logfile", "-",
        "service:create_app()",
    ]  # fmt: skip


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    argv = gunicorn_argv(
        args.bind or settings.bind,
        args.workers or default_api_workers(),
        args.threads,
        settings.log_level,
    )
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from service.server import metrics_dir

        # prometheus-client's multiprocess mode: every gunicorn process adds up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir()
    sys.stdout.flush()
    sys.stderr.flush()
    # gunicorn's master takes over this pid, and with it the signals sent to it.
    os.execv(sys.executable, argv)  # noqa: S606
    return EXIT_OK  # pragma: no cover
