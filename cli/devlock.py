"""The lock and pid file of ``smtpcheck dev``, and the process checks it needs.

A ``kill -9`` of ``smtpcheck dev`` leaves its children running (each is in
its own session). The next one on the same data folder finds them two ways:
the pids in the lock file, and a scan of /proc for processes carrying
``SMTPCHECK_DEV_SUPERVISED=<data folder>`` in their environment (the API and
the workers, with everything they forked) or a redis-server working in
``<data folder>/redis`` (redis rewrites its command line and environment, so
its working directory is what names it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path


class DevLock:
    """``data_dir/dev.lock``: an flock held while ``smtpcheck dev`` runs.

    The file names the pids of the holder and of its children. The kernel
    drops the flock when its holder dies, so a lock left by a dead process is
    simply taken over (and any children it left behind are stopped first).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> tuple[bool, dict[str, int]]:
        """(True, pids the previous holder left) or (False, the live holder's pids)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False, self.read()
            raise
        self.fd = fd
        left = self.read()
        self.write({"dev": os.getpid()})
        return True, left

    def read(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in self.path.read_text().splitlines():
                role, _, pid = line.partition(" ")
                if pid.strip().isdigit():
                    pids[role] = int(pid)
        return pids

    def write(self, pids: Mapping[str, int]) -> None:
        assert self.fd is not None
        text = "".join(f"{role} {pid}\n" for role, pid in pids.items())
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_mentions(pid: int, text: str) -> bool:
    """Whether a live process's command line or environment contains ``text``."""
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if text.encode() in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
    return False


#: Set in the environment of every process ``smtpcheck dev`` starts.
SUPERVISED = "SMTPCHECK_DEV_SUPERVISED"


def ancestors(pid: int) -> set[int]:
    """``pid`` and the processes above it (never stopped as leftovers)."""
    found = {pid}
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])
        found.add(pid)
    return found


def leftovers(data_dir: Path) -> dict[int, str]:
    """Live processes an earlier ``smtpcheck dev`` on ``data_dir`` left: pid -> what."""
    spared = ancestors(os.getpid())
    marker = f"{SUPERVISED}={data_dir}".encode()
    redis_dir = str(data_dir / "redis")
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        with contextlib.suppress(OSError):
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                found[int(entry.name)] = command.decode(errors="replace")[:80]
            elif os.readlink(entry / "cwd") == redis_dir and "redis" in os.readlink(entry / "exe"):
                found[int(entry.name)] = "redis-server"
    return found
