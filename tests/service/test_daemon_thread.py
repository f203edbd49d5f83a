"""workers.daemon_thread: one thread per process, started again when it is gone."""

from __future__ import annotations

import os
import threading

import pytest

from workers.daemon_thread import DaemonThread


def test_the_thread_starts_once_and_again_after_it_ended() -> None:
    ran: list[str] = []
    go_on = threading.Event()

    def serve() -> None:
        ran.append(threading.current_thread().name)
        go_on.wait(5)  # then it returns, as a loop that ran into a bug ends

    daemon = DaemonThread(serve, "smtpcheck-test")
    daemon.ensure()
    daemon.ensure()  # running: nothing more
    first = daemon._thread
    assert first is not None and first.daemon
    go_on.set()
    first.join(5)
    daemon.ensure()  # it ended: a new one
    assert ran == ["smtpcheck-test", "smtpcheck-test"]
    assert daemon._thread is not None
    daemon._thread.join(5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_starts_its_own_thread() -> None:
    started = threading.Event()
    daemon = DaemonThread(lambda: started.set() or threading.Event().wait(), "smtpcheck-test")
    daemon.ensure()
    assert started.wait(5)
    child = os.fork()
    if child == 0:  # the parent's thread is not here: ensure() starts one
        started.clear()
        daemon.ensure()
        os._exit(0 if started.wait(5) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
