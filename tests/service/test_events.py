"""``GET /v1/checks/{id}/events`` of a ``vantage: "all"`` check: one merged stream.

Real redis-server, real RQ workers (one per vantage, burst mode in this
thread), a real SMTP server; the stream is read through the app's own WSGI
response, as a client would read it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from smtpcheck.config import Settings
from tests.dns_server import DNSServer
from tests.service.conftest import ALICE, API_KEYS, submit
from tests.smtp_servers import SMTPTarget

VANTAGES = ("east", "west")


@pytest.fixture
def target(
    smtp_target: Callable[..., SMTPTarget],
    dns_server: Callable[..., DNSServer],
    monkeypatch: pytest.MonkeyPatch,
) -> SMTPTarget:
    """An SMTP server the API and (from the environment, as in production) the worker allow."""
    server = smtp_target(tls="none")
    dns = dns_server({"1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]}})
    monkeypatch.setenv("SMTPCHECK_SECRET_KEY", "test-secret")
    monkeypatch.setenv("SMTPCHECK_ALLOW_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("SMTPCHECK_ALLOWED_PORTS", str(server.port))
    monkeypatch.setenv("SMTPCHECK_HELO_NAME", "checker.local.test")
    monkeypatch.setenv("SMTPCHECK_DNS_SERVERS", f"127.0.0.1:{dns.port}")
    return server


@pytest.fixture
def settings(redis_url: str, target: SMTPTarget) -> Settings:
    return Settings(
        redis_url=redis_url,
        secret_key="test-secret",
        api_keys=API_KEYS,
        allow_networks=(ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({target.port}),
    )


@dataclass
class Event:
    name: str
    data: Any
    id: str | None
    at: float  # when it was read (monotonic)


def parse(chunks: Iterable[bytes]) -> Iterator[Event]:
    """SSE as a browser parses it: blank-line separated, ``id``/``event``/``data`` fields."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
            )
            if "event" in fields:
                data = json.loads(fields["data"])
                yield Event(fields["event"], data, fields.get("id"), time.monotonic())


def live_vantages(redis_client: redis.Redis) -> None:
    for vantage in VANTAGES:
        queue = Queue(f"vantage:{vantage}", connection=redis_client, serializer=JSONSerializer)
        SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer).register_birth()


def fan_out(client: FlaskClient, redis_client: redis.Redis, target: SMTPTarget) -> str:
    live_vantages(redis_client)
    body = {"host": "127.0.0.1", "port": target.port, "tls": "none", "stop_after": "ehlo"}
    return submit(client, {**body, "vantage": "all"})


def read(client: FlaskClient, check_id: str, last_id: str | None = None) -> list[Event]:
    headers = dict(ALICE, **({"Last-Event-ID": last_id} if last_id else {}))
    response = client.get(f"/v1/checks/{check_id}/events", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    return list(parse(response.response))  # type: ignore[arg-type]


def test_a_fan_out_streams_every_vantage_merged_labelled_and_resumable(
    client: FlaskClient,
    redis_client: redis.Redis,
    run_worker: Callable[..., bool],
    target: SMTPTarget,
) -> None:
    check_id = fan_out(client, redis_client, target)
    for vantage in VANTAGES:
        run_worker(vantage)
    document = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    members = {row["vantage"]: row["id"] for row in document["vantages"]}
    assert set(members) == set(VANTAGES)

    events = read(client, check_id)
    assert events[-1].name == "result" and [e.name for e in events].count("result") == 1
    assert events[-1].data["id"] == check_id and events[-1].data["status"] == "finished"
    assert events[-1].data["result"]["outcome"] == "ok"
    lines = [e for e in events if e.name == "line"]
    for vantage, member_id in members.items():  # each vantage's lines, in its own order
        member = client.get(f"/v1/checks/{member_id}", headers=ALICE).get_json()
        mine = [{k: v for k, v in e.data.items() if k != "vantage"} for e in lines
                if e.data["vantage"] == vantage]  # fmt: skip
        assert mine == member["result"]["transcript"], vantage
    assert {e.data["vantage"] for e in lines} == set(VANTAGES)
    # One stream, oldest first across the members: each composite id moves one part on.
    parts = [e.id.split(",") for e in lines if e.id]
    assert len(parts) == len(lines) and all(len(p) == len(VANTAGES) for p in parts)
    for before, after in itertools.pairwise(parts):
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
    statuses = [e.data for e in events if e.name == "status"]
    assert {"id": check_id, "status": "finished"} in statuses  # the fan-out's own
    for vantage, member_id in members.items():
        assert {"id": member_id, "vantage": vantage, "status": "finished"} in statuses

    # Last-Event-ID resumes every member where it was: no line twice, none missed.
    middle = lines[len(lines) // 2]
    resumed = [e for e in read(client, check_id, middle.id) if e.name == "line"]
    assert [e.data for e in resumed] == [e.data for e in lines[len(lines) // 2 + 1 :]]
    # An id that is not this stream's (a single check's, garbage) starts from the top.
    for stranger in (lines[0].id.split(",")[0], "nonsense", ",".join(["9-9"] * 3)):  # type: ignore[union-attr]
        again = [e.data for e in read(client, check_id, stranger) if e.name == "line"]
        assert again == [e.data for e in lines], stranger


def test_a_fan_out_stream_shows_lines_while_its_members_run(
    client: FlaskClient,
    redis_client: redis.Redis,
    run_worker: Callable[..., bool],
    target: SMTPTarget,
) -> None:
    check_id = fan_out(client, redis_client, target)
    response = client.get(f"/v1/checks/{check_id}/events", headers=ALICE)
    assert response.status_code == 200
    events: list[Event] = []

    def follow() -> None:
        for event in parse(response.response):  # type: ignore[arg-type]
            events.append(event)

    reader = threading.Thread(target=follow)
    reader.start()
    run_worker(VANTAGES[0])

    def seen(vantage: str) -> list[Event]:
        return [e for e in list(events) if e.name == "line" and e.data["vantage"] == vantage]

    deadline = time.monotonic() + 15
    while not any("QUIT" in e.data["text"] for e in seen(VANTAGES[0])):
        assert time.monotonic() < deadline, "the first vantage's lines did not come"
        time.sleep(0.02)
    assert not seen(VANTAGES[1]) and events[-1].name != "result"  # the other one has not run
    second_started = time.monotonic()
    run_worker(VANTAGES[1])
    reader.join(20)
    assert not reader.is_alive(), "the stream did not end with its last member"
    assert events[-1].name == "result" and events[-1].data["status"] == "finished"
    assert seen(VANTAGES[1])[0].at > second_started


def test_a_fan_out_stream_is_a_held_response_bounded_per_key(
    settings: Settings,
    redis_client: redis.Redis,
    target: SMTPTarget,
) -> None:
    from service import create_app

    app = create_app(settings.replace(max_held_per_key=1))
    try:
        client = app.test_client()
        check_id = fan_out(client, redis_client, target)
        holding = client.get(f"/v1/checks/{check_id}/events", headers=ALICE)
        assert holding.status_code == 200
        refused = client.get(f"/v1/checks/{check_id}/events", headers=ALICE)
        assert refused.status_code == 429, refused.get_json()
        assert refused.headers["Retry-After"]
        holding.close()  # the client went: its room is given back
        again = client.get(f"/v1/checks/{check_id}/events", headers=ALICE)
        assert again.status_code == 200
        again.close()
    finally:
        app.extensions["smtpcheck"].close()


def test_a_fan_out_of_another_key_has_no_stream(
    client: FlaskClient, redis_client: redis.Redis, target: SMTPTarget
) -> None:
    check_id = fan_out(client, redis_client, target)
    response = client.get(
        f"/v1/checks/{check_id}/events", headers={"Authorization": "Bearer key-bob"}
    )
    assert response.status_code == 404
