"""A check as it happens, end to end: real gunicorn, workers and redis-server.

A slow-banner server makes "before the check ends" visible: it greets only
after BANNER_DELAY seconds, so whatever the caller sees before that came
live. A tarpit never greets: only DELETE ends a check on it early.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.e2e.conftest import SMTPCHECK, Client, Service, Targets, running_service
from tests.smtp_servers import ScriptedServer, read_line

pytestmark = pytest.mark.e2e

BANNER_DELAY = 2.5


@dataclass
class SlowServers:
    slow: ScriptedServer
    tarpit: ScriptedServer
    banner_sent: list[float] = field(default_factory=list)
    tarpit_closed: list[float] = field(default_factory=list)
    tarpit_heard: list[bytes] = field(default_factory=list)


def slow_banner(sent: list[float]):  # type: ignore[no-untyped-def]
    def script(sock: socket.socket) -> None:
        time.sleep(BANNER_DELAY)
        sent.append(time.monotonic())
        sock.sendall(b"220 slow.local.test ESMTP at last\r\n")
        while line := read_line(sock):
            if line.upper().startswith(b"QUIT"):
                sock.sendall(b"221 bye\r\n")
                return
            sock.sendall(b"250 slow.local.test\r\n")

    return script


def tarpit(closed: list[float], heard: list[bytes]):  # type: ignore[no-untyped-def]
    def script(sock: socket.socket) -> None:
        while data := sock.recv(4096):  # never a greeting; until the client goes
            heard.append(data)
        closed.append(time.monotonic())

    return script


@pytest.fixture(scope="module")
def servers() -> Iterator[SlowServers]:
    sent: list[float] = []
    closed: list[float] = []
    heard: list[bytes] = []
    slow = ScriptedServer(slow_banner(sent)).start()
    pit = ScriptedServer(tarpit(closed, heard)).start()
    try:
        yield SlowServers(slow, pit, sent, closed, heard)
    finally:
        pit.stop()
        slow.stop()


@pytest.fixture(scope="module")
def live(
    redis_server: EmbeddedRedis,
    targets: Targets,
    servers: SlowServers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    ports = [*targets.ports, servers.slow.port, servers.tarpit.port]
    tmp = tmp_path_factory.mktemp("live")
    with running_service(redis_server.url, tmp, ports, targets.dns) as svc:
        yield svc


@dataclass
class Event:
    at: float
    name: str
    data: dict
    id: str | None


def read_events(
    base: str, check_id: str, last_id: str | None = None, timeout: float = 30
) -> list[Event]:
    """GET .../events as `curl -N` would, timing each event as it arrives."""
    host, _, port = base.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    # Connection: close, as curl -N gets it when the stream ends (raw lines: no keep-alive wait).
    headers = {"Authorization": f"Bearer {Client(base).api_key}", "Connection": "close"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    connection.request("GET", f"/v1/checks/{check_id}/events", headers=headers)
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    events: list[Event] = []
    fields: dict[str, str] = {}
    try:
        while raw := response.fp.readline():
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "event" in fields:
                events.append(
                    Event(
                        time.monotonic(),
                        fields["event"],
                        json.loads(fields["data"]),
                        fields.get("id"),
                    )
                )
            fields = {}
    finally:
        connection.close()
    return events


def submit(live: Service, port: int, **extra: object) -> str:
    body = {"host": "127.0.0.1", "port": port, "stop_after": "ehlo", **extra}
    return live.client.submit(body)


def test_events_stream_the_transcript_as_it_happens(live: Service, servers: SlowServers) -> None:
    check_id = submit(live, servers.slow.port)
    events = read_events(live.url, check_id)
    names = [event.name for event in events]
    assert names[0] == "status" and names[-1] == "result", names
    assert names.count("result") == 1
    lines = [event for event in events if event.name == "line"]
    texts = [event.data["text"] for event in lines]
    connected = next(e for e in lines if e.data["text"].startswith("connected to"))
    banner = next(e for e in lines if "ESMTP at last" in e.data["text"])
    assert servers.banner_sent, "the server never greeted"
    # Seen live: the connect line came before the server even greeted.
    assert connected.at < servers.banner_sent[-1] < banner.at, texts
    assert set(lines[0].data) >= {"t_ms", "dir", "text"}
    assert [e.data for e in lines] == events[-1].data["result"]["transcript"]
    assert events[-1].data["status"] == "finished"
    statuses = [e.data["status"] for e in events if e.name == "status"]
    assert statuses[-1] == "finished"
    running = next(i for i, e in enumerate(events) if e.data.get("status") == "running")
    assert running < names.index("line")  # a line never comes before "running"

    # Resuming after the connect line sends only what came after it.
    resumed = read_events(live.url, check_id, last_id=connected.id)
    again = [e.data["text"] for e in resumed if e.name == "line"]
    assert again == texts[texts.index(connected.data["text"]) + 1 :]
    assert resumed[-1].name == "result"


def test_transcript_of_a_running_check_shows_the_lines_so_far(
    live: Service, servers: SlowServers
) -> None:
    check_id = submit(live, servers.tarpit.port, timeouts={"total": 20, "command": 20})
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        reply = live.client.request("GET", f"/v1/checks/{check_id}/transcript")
        assert reply.status == 200, reply.text
        assert reply.content_type == "text/plain"
        text = reply.text
        if "connected to" in text:
            break
        time.sleep(0.1)
    assert "=== connected to 127.0.0.1" in text
    assert live.client.request("DELETE", f"/v1/checks/{check_id}").status == 202
    assert live.client.wait(check_id, 20)["status"] == "canceled"


def test_delete_cancels_a_running_check_within_a_second(
    live: Service, servers: SlowServers
) -> None:
    check_id = submit(live, servers.tarpit.port, timeouts={"total": 30, "command": 30})
    # Watch it live until it has connected to the tarpit.
    seen = threading.Event()
    collected: list[Event] = []

    def watch() -> None:
        collected.extend(read_events(live.url, check_id))

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not seen.is_set():
        reply = live.client.request("GET", f"/v1/checks/{check_id}/transcript")
        if "connected to" in reply.text:
            seen.set()
        time.sleep(0.05)
    assert seen.is_set()
    closed_before = len(servers.tarpit_closed)
    asked = time.monotonic()
    reply = live.client.request("DELETE", f"/v1/checks/{check_id}")
    assert reply.status == 202, reply.text
    job = live.client.wait(check_id, 10)
    ended = time.monotonic() - asked
    watcher.join(15)
    assert job["status"] == "canceled", job
    result = job["result"]
    assert result["outcome"] == "canceled" and result["ok"] is False
    assert any("connected to" in line["text"] for line in result["transcript"])
    # The tarpit's thread records the hang-up when it reads the EOF, which on a
    # busy machine may come after the GET that read the end.
    hang_up_seen = time.monotonic() + 5
    while len(servers.tarpit_closed) == closed_before and time.monotonic() < hang_up_seen:
        time.sleep(0.02)
    assert len(servers.tarpit_closed) > closed_before, "the worker did not hang up"
    hung_up = servers.tarpit_closed[-1] - asked
    print(f"DELETE -> tarpit hung up in {hung_up:.2f} s; status canceled in {ended:.2f} s")
    assert hung_up < 2.5  # 1 s by design (0.25 s polls); margin for a loaded machine
    # The live stream ended with the canceled verdict.
    assert collected[-1].name == "result" and collected[-1].data["status"] == "canceled"
    # Ended now: DELETE deletes it.
    assert live.client.request("DELETE", f"/v1/checks/{check_id}").status == 204
    assert live.client.request("GET", f"/v1/checks/{check_id}").status == 404


def test_delete_cancels_a_queued_check(
    live: Service, servers: SlowServers, redis_server: EmbeddedRedis
) -> None:
    # A vantage that has a queue but no worker: its checks stay queued.
    client = redis.Redis.from_url(redis_server.url)
    client.sadd("rq:queues", "rq:queue:vantage:nowhere")
    client.close()
    check_id = submit(live, servers.tarpit.port, vantage="nowhere")
    reply = live.client.request("DELETE", f"/v1/checks/{check_id}")
    assert reply.status == 202, reply.text
    job = live.client.request("GET", f"/v1/checks/{check_id}").json()
    assert job["status"] == "canceled" and job["result"] is None
    assert "canceled" in job["error"]
    events = read_events(live.url, check_id)
    assert [e.name for e in events] == ["status", "result"]
    assert live.client.request("DELETE", f"/v1/checks/{check_id}").status == 204


# ---------------------------------------------------------------------------
# smtpcheck check / list / cancel against the live service
# ---------------------------------------------------------------------------


class CLI:
    """``smtpcheck`` run as a person would, its stdout read line by line as it comes."""

    def __init__(self, live: Service, *args: str) -> None:
        env = {
            **live.env,
            "SMTPCHECK_URL": live.url,
            "SMTPCHECK_API_KEY": str(Client(live.url).api_key),
        }
        self.process = subprocess.Popen(
            [*SMTPCHECK, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append((time.monotonic(), raw.decode().rstrip("\n")))

    def wait_for(self, text: str, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in self.lines:
                if text in line:
                    return at
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never printed: {self.lines}")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        code = self.process.wait(timeout)
        self._reader.join(5)
        assert self.process.stdout is not None and self.process.stderr is not None
        err = self.process.stderr.read().decode()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, "\n".join(line for _, line in self.lines), err


def test_cli_prints_the_id_and_the_first_lines_before_the_banner(
    live: Service, servers: SlowServers
) -> None:
    cli = CLI(live, "check", "127.0.0.1", "--port", str(servers.slow.port), "--stop-after", "ehlo")
    announced = cli.wait_for("=== check ")
    connected = cli.wait_for("=== connected to 127.0.0.1")
    code, out, err = cli.finish()

    assert code == 0, (out, err)
    assert servers.banner_sent
    assert announced <= connected < servers.banner_sent[-1]  # live, not at the end
    greeting = cli.wait_for("<- 220 slow.local.test ESMTP at last")
    assert greeting > servers.banner_sent[-1]
    check_id = out.splitlines()[0].split()[2]
    assert out.count("=== connected to") == 1  # each line once
    assert "PASS  ok at stage ehlo" in out
    assert "\033[" not in out  # no colours into a pipe
    # The same check, as `smtpcheck list` shows it, and cancel deletes an ended one.
    code, listed, _ = CLI(live, "list", "--json").finish()
    assert code == 0
    assert check_id in [item["id"] for item in json.loads(listed)["items"]]
    gone = CLI(live, "cancel", check_id)
    assert gone.finish()[:2] == (0, f"check {check_id} had ended: deleted")


def test_ctrl_c_cancels_the_check_on_the_service(live: Service, servers: SlowServers) -> None:
    cli = CLI(live, "check", "127.0.0.1", "--port", str(servers.tarpit.port), "--timeout", "30")
    cli.wait_for("=== connected to 127.0.0.1")
    check_id = cli.lines[0][1].split()[2]

    cli.process.send_signal(signal.SIGINT)
    code, out, err = cli.finish(timeout=20)

    assert code == 130, (out, err)
    assert f"canceling check {check_id}" in err
    job = live.client.request("GET", f"/v1/checks/{check_id}").json()
    assert job["status"] == "canceled"
    assert job["result"]["outcome"] == "canceled"
    assert "FAIL  canceled" in out  # where it stopped, then the verdict


# ---------------------------------------------------------------------------
# The first ten minutes: the README's curl helper, run as written
# ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def readme_helper() -> str:
    """The sh block the README marks as the check() helper, as written there."""
    text = README.read_text()
    marker = text.index("<!-- the check() helper:")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.S)
    assert block, "no sh block after the helper's marker"
    return block.group(1)


def test_the_readme_curl_helper_prints_transcripts_and_readable_errors(
    live: Service, targets: Targets, tmp_path: Path
) -> None:
    service = live
    helper = readme_helper()
    assert "http://127.0.0.1:8025" in helper  # what make dev listens on ...
    helper = helper.replace("http://127.0.0.1:8025", service.url)  # ... here, a free port
    # Pasted in the repository, where make dev keeps its key.
    (tmp_path / ".smtpcheck").mkdir()
    (tmp_path / ".smtpcheck" / "api_key").write_text(f"{Client(service.url).api_key}\n")
    port = targets.plain.port
    script = "\n".join(
        [
            helper,
            f"""check '{{"host": "127.0.0.1", "port": {port}, "stop_after": "banner"}}'""",
            'echo "rc=$?"',
            """check '{"host": "127.0.0.1", "port": 1, "stop_after": "banner"}'""",
            'echo "rc=$?"',
            f"""check '{{"host": "::1", "port": {port}}}'""",
            'echo "rc=$?"',
            """check 'not json'""",
            'echo "rc=$?"',
            "echo still here",
        ]
    )
    env = {k: v for k, v in service.env.items() if not k.startswith("SMTPCHECK_")}
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, (out, err)
    assert out.splitlines()[-1] == "still here"
    assert [line for line in out.splitlines() if line.startswith("rc=")] == [
        "rc=0",
        "rc=1",
        "rc=1",
        "rc=1",
    ], (out, err)
    assert "<- 220 " in out and "=== connected to 127.0.0.1" in out
    assert "KeyError" not in err and "Traceback" not in err
    assert "422 Unprocessable Content" in err
    assert "  port: port 1 is not allowed" in err
    assert "SMTPCHECK_ALLOW_NETWORKS" in err  # a loopback target says how to allow it
    assert "400 Bad Request" in err


def test_readme_and_api_doc_name_every_endpoint_and_link_only_inside() -> None:
    spec = yaml.safe_load((REPO / "openapi.yaml").read_text())
    readme = README.read_text()
    api = (REPO / "docs" / "api.md").read_text()
    for path, operations in spec["paths"].items():
        shown = path.replace("{check_id}", "{id}")
        for method in operations:
            if method in ("get", "post", "delete", "put", "patch"):
                assert f"{method.upper()} {shown}" in readme or shown in readme, (method, path)
                assert shown in api, (method, path)
    from smtpcheck.contract import OUTCOMES

    for outcome in OUTCOMES:
        assert f"`{outcome}`" in api, outcome
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)]+)\)", doc.read_text()):
            if link.startswith(("http://", "https://", "#", "mailto:")):
                continue
            assert (doc.parent / link.split("#")[0]).exists(), (doc.name, link)
            assert (doc.parent / link).resolve().is_relative_to(REPO), (doc.name, link)
