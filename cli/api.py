"""``smtpcheck api``: the gunicorn launcher."""

from __future__ import annotations

import argparse
import os
import sys

from cli.errors import EXIT_OK
from smtpcheck.config import Settings


def default_api_workers() -> int:
    """gunicorn processes: one per core, at least two (each serves many connections)."""
    return max(2, min(os.cpu_count() or 1, 8))


def gunicorn_argv(bind: str, workers: int, connections: int, log_level: str) -> list[str]:
    """gunicorn's command line; the rest of its settings (worker class gevent, the
    header timeout) are in cli/gunicorn_config.py, which says why."""
    return [
        sys.executable, "-m", "gunicorn",
        "--workers", str(workers),
        "--worker-connections", str(connections),
        "--bind", bind,
        "--no-control-socket",
        "--config", "python:cli.gunicorn_config",
        "--log-level", log_level.lower(),
        "--error-logfile", "-",
        "service:create_app()",
    ]  # fmt: skip


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    argv = gunicorn_argv(
        args.bind or settings.bind,
        args.workers or default_api_workers(),
        args.connections,
        settings.log_level,
    )
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from cli.gunicorn_config import metrics_dir

        # prometheus-client's multiprocess mode: every gunicorn process adds up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir()
    sys.stdout.flush()
    sys.stderr.flush()
    # gunicorn's master takes over this pid, and with it the signals sent to it.
    os.execv(sys.executable, argv)  # noqa: S606
    return EXIT_OK  # pragma: no cover
