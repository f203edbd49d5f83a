"""A daemon thread that one worker process runs for all its checks.

The transcript publisher, the cancel watcher and the politeness-lease renewer
are each one thread per process, started when the first check needs it. A
forked child (RQ's ``fork`` worker class) inherits the object but not the
thread, so the thread is started again in any process that does not run it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class DaemonThread:
    """``target`` in a daemon thread of this process, started by :meth:`ensure`."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target = target
        self._name = name
        self._pid = 0  # the process whose thread runs ``target`` now (0: none)
        self._thread: threading.Thread | None = None

    def ensure(self) -> None:
        """Start the thread unless this process already runs it (none yet, it
        ended, or this is a fork of the process that started it). Call it
        holding the lock that guards the work the thread serves: the
        publisher calls it for every line, so while the thread runs it is one
        ``os.getpid()`` and a comparison."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        finally:  # (it ran into a bug): the next ensure() starts another
            self._pid = 0
