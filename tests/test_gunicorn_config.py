"""gunicorn's settings module: what the master imports, and the metrics folder kept small."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from cli import gunicorn_config


def test_the_master_imports_no_redis_before_gevent_patches() -> None:
    """A module the master imports keeps the unpatched ssl (gevent warns, on stderr)."""
    code = (
        "import sys, cli.gunicorn_config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'flask', 'rq')))"
    )
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/0", "SMTPCHECK_LOG_LEVEL": "debug"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def count_in(folder: Path, pid: int, amount: float) -> None:
    """What gunicorn worker process ``pid`` leaves: its own counter file, as
    prometheus-client's multiprocess mode writes it."""
    key = mmap_key("smtpcheck_test", "smtpcheck_test_total", ["route"], ["/v1/checks"], "test")
    values = MmapedDict(str(folder / f"counter_{pid}.db"))
    values.write_value(key, amount, time.time())
    values.close()


def scraped_total(folder: Path) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(folder))
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "smtpcheck_test_total":
                return float(sample.value)
    return 0.0


def test_dead_workers_files_fold_into_one_archive(tmp_path: Path) -> None:
    for pid in (101, 102, 103):
        count_in(tmp_path, pid, pid - 100)
    assert scraped_total(tmp_path) == 6

    for pid in (101, 102, 103):
        gunicorn_config.compact(tmp_path, pid)

    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db"]
    assert scraped_total(tmp_path) == 6  # nothing counted is lost
    count_in(tmp_path, 104, 4)
    gunicorn_config.compact(tmp_path, 104)
    assert scraped_total(tmp_path) == 10
    assert len(list(tmp_path.glob("*.db"))) == 1


def test_folders_of_gone_gunicorns_are_swept(tmp_path: Path) -> None:
    prefix = gunicorn_config.METRICS_DIR_PREFIX
    own, dead, live, young = (
        tmp_path / f"{prefix}{name}" for name in ("own", "dead", "live", "young")
    )
    for folder in (own, dead, live, young):
        folder.mkdir()
        (folder / gunicorn_config.LOCK_NAME).touch()
    held = (live / gunicorn_config.LOCK_NAME).open("a")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a gunicorn still running
    old = time.time() - 2 * gunicorn_config.STALE_AFTER_SECONDS
    for folder in (own, dead, live):
        os.utime(folder, (old, old))
    try:
        gunicorn_config.sweep_stale(own)
    finally:
        held.close()

    assert sorted(p.name.removeprefix(prefix) for p in tmp_path.iterdir()) == [
        "live",
        "own",
        "young",
    ]
