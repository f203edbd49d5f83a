"""``smtpcheck dev``: up with one command, one at a time, down with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.devlock import leftovers, pid_alive
from cli.main import main
from smtpcheck.embedded_redis import free_port
from tests.e2e.conftest import SMTPCHECK, Client, Targets, base_env, processes_mentioning

pytestmark = pytest.mark.e2e


class DevProcess:
    """``smtpcheck dev`` as a child; its stdout collected by a thread."""

    def __init__(self, env: dict[str, str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [*SMTPCHECK, "dev"],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
            into.append(line.decode("utf-8", "replace"))

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for_url(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"smtpcheck dev is up: (http://\S+)", self.stdout)
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no URL printed\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}")

    def finish(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        for thread in self._threads:
            thread.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._close()


@pytest.fixture
def dev_env(targets: Targets, tmp_path: Path) -> dict[str, str]:
    env = base_env(tmp_path, None, targets.ports, targets.dns)
    for name in ("SMTPCHECK_SECRET_KEY", "SMTPCHECK_API_KEYS"):
        del env[name]  # dev makes its own
    env["SMTPCHECK_BIND"] = f"127.0.0.1:{free_port()}"
    return env


@pytest.fixture
def dev(dev_env: dict[str, str]) -> Iterator[DevProcess]:
    process = DevProcess(dev_env)
    try:
        yield process
    finally:
        process.kill()


def test_dev_runs_a_check_refuses_a_twin_and_stops_clean(
    dev: DevProcess,
    dev_env: dict[str, str],
    targets: Targets,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = Path(dev_env["SMTPCHECK_DATA_DIR"]).resolve()
    url = dev.wait_for_url()
    api_key = (data_dir / "api_key").read_text().strip()
    assert (data_dir / "secret_key").stat().st_mode & 0o777 == 0o600
    assert api_key in dev.stdout
    assert "curl" in dev.stdout and "/events" in dev.stdout and "/transcript" in dev.stdout
    # The client commands it prints work as pasted: the full path of smtpcheck.
    pasted = [line.strip() for line in dev.stdout.splitlines() if "SMTPCHECK_URL=" in line]
    pasted += [line.strip() for line in dev.stdout.splitlines() if line.endswith(" list")]
    assert len(pasted) == 2 and pasted[1].startswith("/"), dev.stdout
    listed = subprocess.run(
        ["bash", "-c", "\n".join(pasted)], env=dev_env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and listed.stdout.startswith("no checks"), listed
    assert f"Web page {url}/" in dev.stdout
    page = Client(url, api_key=None).request("GET", "/")
    assert page.status == 200 and page.content_type == "text/html"
    assert (data_dir / "dev.lock").exists()
    started = processes_mentioning(str(data_dir))
    assert len(started) >= 5  # dev, redis-server, gunicorn master + workers, worker pool + 2

    # A check through it, with the command-line client.
    monkeypatch.delenv("SMTPCHECK_URL", raising=False)
    code = main(
        [
            "check", "127.0.0.1", "--port", str(targets.plain.port), "--stop-after", "ehlo",
            "--url", url, "--api-key", api_key,
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "<- 220" in out and "-> EHLO" in out and "PASS" in out

    # A second dev on the same data folder refuses, without touching the first.
    twin = DevProcess(dev_env)
    try:
        assert twin.finish(30) != 0
    finally:
        twin.kill()
    assert "already running" in twin.stderr
    assert f"pid {dev.process.pid}" in twin.stderr
    assert dev.process.poll() is None

    # Ctrl-C stops everything and leaves nothing behind.
    dev.process.send_signal(signal.SIGINT)
    assert dev.finish(60) == 0, dev.stderr
    deadline = time.monotonic() + 10
    left = processes_mentioning(str(data_dir))
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_mentioning(str(data_dir))
    assert left == [], left
    assert not (data_dir / "dev.lock").exists()


def test_dev_reports_a_taken_port(dev_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        dev_env["SMTPCHECK_BIND"] = f"127.0.0.1:{port}"
        process = DevProcess(dev_env)
        try:
            assert process.finish(30) == 1
        finally:
            process.kill()
    assert f"127.0.0.1:{port} is already in use" in process.stderr
    data_dir = Path(dev_env["SMTPCHECK_DATA_DIR"]).resolve()
    assert processes_mentioning(str(data_dir)) == []
    assert not (data_dir / "dev.lock").exists()


def test_dev_after_a_kill_9_stops_what_the_killed_one_left(
    dev_env: dict[str, str], tmp_path: Path
) -> None:
    """Under `make dev`: the data folder is .smtpcheck in the current directory.
    The lock the killed one left names a dead dev: the second takes it over."""
    del dev_env["SMTPCHECK_DATA_DIR"]
    data_dir = (tmp_path / ".smtpcheck").resolve()
    first = DevProcess(dev_env, cwd=tmp_path)
    second = None
    try:
        first.wait_for_url()
        recorded = {
            role: int(pid)
            for role, _, pid in (
                line.partition(" ") for line in (data_dir / "dev.lock").read_text().splitlines()
            )
        }
        assert {"redis", "api", "workers"} <= set(recorded)
        left = [pid for role, pid in recorded.items() if role != "dev"]
        os.kill(first.process.pid, signal.SIGKILL)  # the supervisor only: its children live on
        first.process.wait(10)  # (its pipes stay open: the children hold them)
        assert all(pid_alive(pid) for pid in left)

        second = DevProcess(dev_env, cwd=tmp_path)
        second.wait_for_url()
        assert not [pid for pid in left if pid_alive(pid)], second.stderr
        assert f"stopping redis-server (pid {recorded['redis']})" in second.stderr
        second.process.send_signal(signal.SIGINT)
        assert second.finish(60) == 0, second.stderr
        deadline = time.monotonic() + 10
        while leftovers(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers(data_dir) == {}
    finally:
        for pid in leftovers(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in (first, second):
            if process is not None:
                process.kill()
