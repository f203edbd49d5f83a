"""Webhooks (request field ``callback``): validated by the API, sent by a real
RQ worker to a real HTTP receiver on loopback, signed the Standard Webhooks
way, retried on a 5xx, never redirected, and the secret never in Redis."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from service import create_app
from smtpcheck.config import ConfigError, Settings
from smtpcheck.signature import sign
from tests.dns_server import DNSServer
from tests.security.leaks import FERNET_PREFIX, Needle, base64_forms, find, redis_values
from tests.service.conftest import ALICE, API_KEYS, rq_worker, stop_session, submit
from tests.smtp_servers import LOCAL_DOMAIN, Certificates, ScriptedServer, SMTPTarget, TargetHandler
from tests.webhook_receiver import Receiver, verify
from workers import webhook

SECRET = "whsec_" + base64.b64encode(b"webhook-key-for-the-tests-32byte").decode()
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))
PLAIN_SECRET = "a-plain-secret-of-enough-length"


def secret_needles(secret: str) -> list[Needle]:
    wanted = [Needle("secret", secret.encode())]
    wanted += [
        Needle("secret inside base64", form) for form in sorted(base64_forms(secret.encode()))
    ]
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"))
        wanted += [Needle("key bytes", key), Needle("key, hex", key.hex().encode())]
    return wanted


def test_the_signature_matches_the_standard_webhooks_test_vector() -> None:
    """The vector the Standard Webhooks reference libraries test against."""
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


# ---------------------------------------------------------------------------
# the API: validation, masking, sealing
# ---------------------------------------------------------------------------


@pytest.fixture
def strict_app(redis_url: str) -> Iterator[Flask]:
    """Production defaults: no allowed network, https on 443 only."""
    app = create_app(Settings(redis_url=redis_url, secret_key="test-secret", api_keys=API_KEYS))
    yield app
    app.extensions["smtpcheck"].close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:192.168.0.1]/hook", "IPv4-mapped"),
        ("https://100.64.0.1/hook", "CGNAT"),
        ("https://localhost/hook", "loopback"),
        ("https://0x7f000001/hook", "127.0.0.1"),
        ("http://hooks.example.com/x", "https"),
        ("https://hooks.example.com:8443/x", "port 8443"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("ftp://hooks.example.com/x", "https"),
        ("https:///nohost", "host"),
        ("https://hooks.example.com/a b", "spaces"),
    ],
)
def test_a_callback_url_the_policy_refuses_is_a_422_naming_the_field(
    strict_app: Flask, url: str, says: str
) -> None:
    response = strict_app.test_client().post(
        "/v1/checks",
        json={"host": "mx.example.com", "callback": {"url": url, "secret": PLAIN_SECRET}},
        headers=ALICE,
    )

    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert list(body["errors"]) == ["callback.url"], body
    assert says in body["errors"]["callback.url"][0]


@pytest.mark.parametrize(
    ("callback", "field"),
    [
        ({"url": "https://hooks.example.com/x"}, "callback.secret"),
        ({"url": "https://hooks.example.com/x", "secret": "short"}, "callback.secret"),
        ({"url": "https://hooks.example.com/x", "secret": "whsec_!!notbase64"}, "callback.secret"),
        ({"url": "https://hooks.example.com/x", "secret": "whsec_QUJD"}, "callback.secret"),
        ({"url": "https://hooks.example.com/x", "secret": "x" * 257}, "callback.secret"),
        ({"secret": PLAIN_SECRET}, "callback.url"),
        ({"url": "https://h.example.com/", "secret": PLAIN_SECRET, "extra": 1}, "callback.extra"),
    ],
)
def test_a_callback_without_a_usable_secret_or_url_is_a_422(
    strict_app: Flask, callback: dict[str, Any], field: str
) -> None:
    response = strict_app.test_client().post(
        "/v1/checks", json={"host": "mx.example.com", "callback": callback}, headers=ALICE
    )

    assert response.status_code == 422
    assert field in response.get_json()["errors"], response.get_json()


def test_an_operator_can_allow_http_other_ports_and_a_network(redis_url: str) -> None:
    settings = Settings(
        redis_url=redis_url,
        secret_key="test-secret",
        api_keys=API_KEYS,
        allow_networks=(ip_network("10.9.0.0/16"),),
        callback_http=True,
        callback_ports=frozenset({8080}),
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        check_id = submit(
            client,
            {
                "host": "mx.example.com",
                "callback": {"url": "http://10.9.8.7:8080/h?a=1", "secret": SECRET},
            },
        )
        refused = client.post(
            "/v1/checks",
            json={
                "host": "mx.example.com",
                "callback": {"url": "http://10.8.0.1:8080/", "secret": SECRET},
            },
            headers=ALICE,
        )
        body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    finally:
        app.extensions["smtpcheck"].close()

    assert body["request"]["callback"] == {"url": "http://10.9.8.7:8080/h?a=1", "secret": "****"}
    assert body["callback"] == {"status": "pending", "attempts": []}
    assert refused.status_code == 422
    assert "private" in refused.get_json()["errors"]["callback.url"][0]


def test_the_secret_travels_sealed_and_is_shown_masked(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Queued: the request holds ****, the deferred delivery job a Fernet seal,
    Redis no clear secret."""
    check_id = submit(
        client,
        {
            "host": "mx.example.com",
            "callback": {"url": "https://hooks.example.com/x", "secret": SECRET},
        },
    )

    raw = redis_client.hget(f"rq:job:{check_id}", "data")
    assert raw is not None
    kwargs = json.loads(zlib.decompress(raw))[3]
    assert kwargs["request"]["callback"]["secret"] == "****"
    assert set(kwargs) == {"request", "sealed_password"}  # the check never holds it
    delivery = Job.fetch(
        f"{check_id}-webhook-1", connection=redis_client, serializer=JSONSerializer
    )
    assert delivery.get_status() == JobStatus.DEFERRED  # until the check ends
    assert delivery.kwargs["sealed_secret"].startswith(FERNET_PREFIX.decode())
    assert find(redis_values(redis_client), secret_needles(SECRET)) == []


# ---------------------------------------------------------------------------
# the worker: a real RQ worker, a real SMTP target, a real HTTP receiver
# ---------------------------------------------------------------------------


@pytest.fixture
def hooked(
    redis_url: str,
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., FlaskClient]]:
    """``hooked(ports, allow=..., dns=..., ca_file=...)``: an API and worker env in
    which checks go to a plain aiosmtpd target on 127.0.0.1 and webhooks may
    use http or https on the given ports."""
    target = smtp_target(tls="none")
    apps: list[Flask] = []

    def make(
        ports: list[int],
        allow: str = "127.0.0.0/8",
        dns: DNSServer | None = None,
        ca_file: str | None = None,
        smtp_port: int | None = None,
    ) -> FlaskClient:
        env = {
            "SMTPCHECK_SECRET_KEY": "test-secret",
            "SMTPCHECK_ALLOW_NETWORKS": allow,
            "SMTPCHECK_ALLOWED_PORTS": str(smtp_port or target.port),
            "SMTPCHECK_HELO_NAME": "checker.test",
            "SMTPCHECK_CALLBACK_HTTP": "on",
            "SMTPCHECK_CALLBACK_PORTS": ",".join(map(str, ports)),
        }
        if ca_file is not None:
            env["SMTPCHECK_CA_FILE"] = ca_file
        else:
            monkeypatch.delenv("SMTPCHECK_CA_FILE", raising=False)
        if dns is not None:
            env["SMTPCHECK_DNS_SERVERS"] = f"{dns.host}:{dns.port}"
        else:
            monkeypatch.delenv("SMTPCHECK_DNS_SERVERS", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # the worker reads its settings from here
        settings = Settings.from_env(
            {**env, "REDIS_URL": redis_url, "SMTPCHECK_API_KEYS": API_KEYS}
        )
        app = create_app(settings)
        apps.append(app)
        return app.test_client()

    make.target = target  # type: ignore[attr-defined]
    yield make
    for app in apps:
        app.extensions["smtpcheck"].close()


def check_body(port: int, url: str, secret: str = SECRET) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "stop_after": "ehlo",
        "callback": {"url": url, "secret": secret},
    }


def work(connection: redis.Redis, *, scheduler: bool = False) -> None:
    queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING", with_scheduler=scheduler)


def wait_until_due(connection: redis.Redis, timeout: float = 15.0) -> None:
    """Until RQ's scheduler would move the scheduled retry to the queue."""
    queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
    registry = ScheduledJobRegistry(queue=queue)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        due = connection.zrange(registry.key, 0, 0, withscores=True)
        assert due, "no retry was scheduled"
        if due[0][1] <= time.time():
            return
        time.sleep(0.1)
    raise AssertionError("the retry never came due")


def test_a_finished_check_is_posted_to_the_receiver_signed(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    redis_client: redis.Redis,
) -> None:
    hook = receiver([(204, {})])
    client = hooked([hook.port])
    check_id = submit(client, check_body(hooked.target.port, hook.url("/hook?src=smtpcheck")))  # type: ignore[attr-defined]

    work(redis_client)  # the check, then the delivery RQ enqueues once it ended

    assert len(hook.received) == 1
    got = hook.received[0]
    assert got.path == "/hook?src=smtpcheck"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == check_id
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 120
    assert verify(SECRET, got)
    assert not verify("whsec_" + base64.b64encode(b"another-key-another-key-1234").decode(), got)
    posted = json.loads(got.body)
    assert posted["id"] == check_id
    assert posted["status"] == "finished"
    assert posted["result"]["outcome"] == "ok"
    assert posted["request"]["callback"]["secret"] == "****"

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert {key: value for key, value in body.items() if key != "callback"} == {
        key: value for key, value in posted.items() if key != "callback"
    }  # the document GET returns, as it was when sent
    assert body["callback"]["status"] == "delivered"
    (attempt,) = body["callback"]["attempts"]
    assert attempt["status_code"] == 204
    assert attempt["error"] is None
    assert attempt["address"] == "127.0.0.1"
    assert attempt["duration_ms"] >= 0
    # nothing of the secret is left: the delivery job is gone, and its seal
    assert redis_client.keys("rq:job:*-webhook-*") == []
    assert find(redis_values(redis_client), secret_needles(SECRET)) == []
    assert find(redis_values(redis_client), [Needle("Fernet token", FERNET_PREFIX)]) == []


def test_a_500_is_retried_through_the_scheduler_and_every_attempt_shows(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    redis_client: redis.Redis,
) -> None:
    hook = receiver([(500, {}), (200, {})])
    client = hooked([hook.port])
    check_id = submit(client, check_body(hooked.target.port, hook.url(), PLAIN_SECRET))  # type: ignore[attr-defined]

    work(redis_client)
    waiting = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert waiting["status"] == "finished"
    assert waiting["callback"]["status"] == "retrying", waiting["callback"]
    assert waiting["callback"]["next_attempt_at"]
    wait_until_due(redis_client)
    work(redis_client, scheduler=True)  # RQ's scheduler moves the due retry to the queue

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert [a["status_code"] for a in callback["attempts"]] == [500, 200]
    assert callback["attempts"][0]["error"] == "the receiver answered 500"
    assert callback["status"] == "delivered"
    assert len(hook.received) == 2
    assert all(verify(PLAIN_SECRET, got) for got in hook.received)
    assert {got.headers["webhook-id"] for got in hook.received} == {check_id}
    assert find(redis_values(redis_client), secret_needles(PLAIN_SECRET)) == []


def test_a_redirect_is_not_followed_nor_retried(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    redis_client: redis.Redis,
) -> None:
    elsewhere = receiver([(200, {})])
    hook = receiver([(307, {"Location": elsewhere.url("/stolen")})])
    client = hooked([hook.port, elsewhere.port])
    check_id = submit(client, check_body(hooked.target.port, hook.url()))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "failed"
    (attempt,) = callback["attempts"]
    assert attempt["status_code"] == 307
    assert "redirects are not followed" in attempt["error"]
    assert len(hook.received) == 1
    assert elsewhere.received == []
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    assert ScheduledJobRegistry(queue=queue).count == 0


def test_a_host_name_that_resolves_to_a_forbidden_address_is_not_dialled(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    dns_server: Callable[..., DNSServer],
    redis_client: redis.Redis,
) -> None:
    """The API cannot judge a name; the worker resolves it, judges the address
    and dials nothing (the checks' own target, 127.0.0.1, is allowed)."""
    hook = receiver([(200, {})], host="127.0.0.2")
    dns = dns_server({"hooks.rebind.test.": {"A": ["127.0.0.2"]}})
    client = hooked([hook.port], allow="127.0.0.1/32", dns=dns)
    url = f"http://hooks.rebind.test:{hook.port}/hook"
    check_id = submit(client, check_body(hooked.target.port, url))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "failed"
    (attempt,) = callback["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused: 127.0.0.2 is a loopback address")
    assert hook.received == []


def test_https_is_verified_with_sni_against_the_configured_ca(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    certificates: Certificates,
    dns_server: Callable[..., DNSServer],
    redis_client: redis.Redis,
) -> None:
    """The name is resolved by the worker, the socket opened to the address it
    vetted, and TLS verified for the name (SNI) against SMTPCHECK_CA_FILE."""
    hook = receiver([(200, {})], tls=certificates.server_context())
    dns = dns_server({"mail.local.test.": {"A": ["127.0.0.1"]}})
    client = hooked([hook.port], dns=dns, ca_file=certificates.ca_file)
    url = hook.url(host="mail.local.test")
    check_id = submit(client, check_body(hooked.target.port, url))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "delivered", callback
    assert callback["attempts"][0]["status_code"] == 200
    assert "mail.local.test" in certificates.sni_seen
    assert verify(SECRET, hook.received[0])


def test_an_untrusted_certificate_is_a_failed_attempt_and_retried(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    certificates: Certificates,
    redis_client: redis.Redis,
) -> None:
    hook = receiver([(200, {})], tls=certificates.server_context())
    client = hooked([hook.port])  # no SMTPCHECK_CA_FILE: the test CA is unknown
    check_id = submit(client, check_body(hooked.target.port, hook.url()))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "retrying", callback
    (attempt,) = callback["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("TLS: "), attempt
    assert "certificate" in attempt["error"]
    assert hook.received == []


def test_callback_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"SMTPCHECK_CALLBACK_PORTS": "443, 8443", "SMTPCHECK_CALLBACK_HTTP": "on"}
    )
    assert settings.callback_ports == frozenset({443, 8443})
    assert settings.callback_http is True
    assert Settings.from_env({}).callback_ports == frozenset({443})
    assert Settings.from_env({}).callback_http is False
    for bad in ({"SMTPCHECK_CALLBACK_PORTS": "443,x"}, {"SMTPCHECK_CALLBACK_HTTP": "yes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings.from_env(bad)


def test_a_check_whose_worker_died_is_posted_as_failed(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    scripted_server: Callable[..., ScriptedServer],
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """The check's worker is killed mid-dialogue; once RQ marks the check failed
    (its heartbeat lapsed), the delivery RQ enqueues posts the failed check."""
    hook = receiver([(200, {})])
    released = threading.Event()

    talking = threading.Event()

    def stall(sock: socket.socket) -> None:  # greets, then says nothing more
        sock.sendall(b"220 stall.local.test ESMTP\r\n")
        talking.set()
        released.wait(30)

    server = scripted_server(stall)
    client = hooked([hook.port], smtp_port=server.port)
    check_id = submit(client, check_body(server.port, hook.url()))
    # rq.SimpleWorker: the check runs in this very process, so one SIGKILL ends it
    process = rq_worker(redis_url, "--worker-class", "rq.SimpleWorker")
    try:
        assert talking.wait(20), "the check never reached the server"
    finally:
        stop_session(process)  # without a word
        released.set()
    registry = StartedJobRegistry(
        "vantage:default", connection=redis_client, serializer=JSONSerializer
    )
    members = redis_client.zrange(registry.key, 0, -1)
    redis_client.zadd(registry.key, dict.fromkeys(members, time.time() - 1), xx=True)  # lapsed
    assert client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["status"] == "failed"

    work(redis_client)  # a live worker takes the delivery

    (got,) = hook.received
    posted = json.loads(got.body)
    assert posted["id"] == check_id
    assert posted["status"] == "failed"
    assert posted["error"] == "the worker running this check stopped before it finished"
    assert verify(SECRET, got)
    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "delivered"


def test_a_greylisted_check_is_posted_once_after_its_last_attempt(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    smtp_target: Callable[..., SMTPTarget],
    redis_client: redis.Redis,
) -> None:
    hook = receiver([(200, {})])
    target = smtp_target(tls="none", handler=TargetHandler(greylist=True))
    client = hooked([hook.port], smtp_port=target.port)
    body = {
        **check_body(target.port, hook.url()),
        "stop_after": "rcpt",
        "mail_from": f"alice@{LOCAL_DOMAIN}",
        "rcpt_to": [f"bob@{LOCAL_DOMAIN}"],
        "retry_temporary": True,
        "retry": {"attempts": 2, "delay": 1},
    }
    check_id = submit(client, body)

    work(redis_client)  # attempt 1: greylisted, the check waits for attempt 2
    assert client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["status"] == "retrying"
    assert hook.received == []
    wait_until_due(redis_client)
    work(redis_client, scheduler=True)  # attempt 2, then the delivery

    (got,) = hook.received
    posted = json.loads(got.body)
    assert posted["status"] == "finished"
    assert posted["result"]["outcome"] == "ok"
    assert len(posted["result"]["attempts"]) == 2
    assert redis_client.keys("rq:job:*-webhook-*") == []  # one delivery, and it is gone


def test_a_fan_out_stores_no_callback_secret(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """vantage all: every member's seal, and the fan-out's own record, show no secret."""
    for vantage in ("east", "west"):
        queue = Queue(f"vantage:{vantage}", connection=redis_client, serializer=JSONSerializer)
        SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer).register_birth()
    callback = {"url": "https://hooks.example.com/x", "secret": SECRET}
    check_id = submit(client, {"host": "mx.example.com", "vantage": "all", "callback": callback})

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert body["request"]["callback"] == {"url": "https://hooks.example.com/x", "secret": "****"}
    assert {row["vantage"] for row in body["vantages"]} >= {"east", "west"}
    assert find(redis_values(redis_client), secret_needles(SECRET)) == []


def test_a_receiver_that_trickles_is_cut_at_the_attempt_deadline(
    hooked: Callable[..., FlaskClient],
    scripted_server: Callable[..., ScriptedServer],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One byte of status line every 0.2 s: each read is quick, the attempt is not."""
    monkeypatch.setattr(webhook, "ATTEMPT_TIMEOUT", 1.5)  # 10 s in production

    def trickle(sock: socket.socket) -> None:
        sock.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\n" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)

    server = scripted_server(trickle)
    client = hooked([server.port])
    check_id = submit(client, check_body(hooked.target.port, f"http://127.0.0.1:{server.port}/"))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    (attempt,) = callback["attempts"]
    assert attempt["error"] == "timed out (at most 1.5 s per attempt)", attempt
    assert 1000 <= attempt["duration_ms"] < 6000
    assert callback["status"] == "retrying"


def test_at_most_64_kib_of_the_answer_is_read(
    hooked: Callable[..., FlaskClient],
    scripted_server: Callable[..., ScriptedServer],
    redis_client: redis.Redis,
) -> None:
    sent = []

    def flood(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(1000):  # 64 MiB, unless the client hangs up first
            sock.sendall(chunk)
            sent.append(len(chunk))

    server = scripted_server(flood)
    client = hooked([server.port])
    check_id = submit(client, check_body(hooked.target.port, f"http://127.0.0.1:{server.port}/"))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "delivered"
    assert callback["attempts"][0]["status_code"] == 200
    assert sum(sent) < 16 * 1024 * 1024  # the client hung up long before the end


def test_a_check_canceled_before_it_ran_is_posted_as_canceled(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    redis_client: redis.Redis,
) -> None:
    hook = receiver([(200, {})])
    client = hooked([hook.port])
    check_id = submit(client, check_body(hooked.target.port, hook.url()))  # type: ignore[attr-defined]
    assert client.delete(f"/v1/checks/{check_id}", headers=ALICE).status_code == 202

    work(redis_client)  # the check does not run; its delivery does

    (got,) = hook.received
    posted = json.loads(got.body)
    assert posted["id"] == check_id
    assert posted["status"] == "canceled"
    assert posted["result"] is None
    assert verify(SECRET, got)


def test_a_deleted_check_is_never_posted(client: FlaskClient, redis_client: redis.Redis) -> None:
    callback = {"url": "https://hooks.example.com/x", "secret": SECRET}
    check_id = submit(client, {"host": "mx.example.com", "callback": callback})
    client.delete(f"/v1/checks/{check_id}", headers=ALICE)  # canceled: its delivery is queued
    client.delete(f"/v1/checks/{check_id}", headers=ALICE)  # deleted
    assert redis_client.exists(f"rq:job:{check_id}") == 0

    work(redis_client)  # the delivery finds no check and posts nothing, seal and all

    assert redis_client.keys("rq:job:*-webhook-*") == []
    assert find(redis_values(redis_client), [Needle("Fernet token", FERNET_PREFIX)]) == []


def test_a_check_canceled_while_it_runs_is_posted_as_canceled(
    hooked: Callable[..., FlaskClient],
    receiver: Callable[..., Receiver],
    scripted_server: Callable[..., ScriptedServer],
    redis_client: redis.Redis,
) -> None:
    hook = receiver([(200, {})])
    talking = threading.Event()

    def stall(sock: socket.socket) -> None:  # greets, then says nothing more
        sock.sendall(b"220 stall.local.test ESMTP\r\n")
        talking.set()
        while sock.recv(4096):
            pass

    server = scripted_server(stall)
    client = hooked([hook.port], smtp_port=server.port)
    check_id = submit(client, check_body(server.port, hook.url()))
    answers: list[int] = []

    def cancel() -> None:
        if talking.wait(20):
            answers.append(client.delete(f"/v1/checks/{check_id}", headers=ALICE).status_code)

    canceler = threading.Thread(target=cancel)
    canceler.start()
    work(redis_client)  # the check (canceled within a second), then its delivery
    canceler.join(5)

    assert answers == [202]
    (got,) = hook.received
    posted = json.loads(got.body)
    assert posted["status"] == "canceled"
    assert posted["result"]["outcome"] == "canceled"
    assert verify(SECRET, got)


def test_a_host_name_that_does_not_exist_is_not_retried(
    hooked: Callable[..., FlaskClient],
    dns_server: Callable[..., DNSServer],
    redis_client: redis.Redis,
) -> None:
    dns = dns_server({})
    client = hooked([8443], dns=dns)
    url = "https://hooks.nowhere.test:8443/hook"
    check_id = submit(client, check_body(hooked.target.port, url))  # type: ignore[attr-defined]

    work(redis_client)

    callback = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["callback"]
    assert callback["status"] == "failed", callback
    (attempt,) = callback["attempts"]
    assert attempt["error"].startswith("DNS: "), attempt
    assert "NXDOMAIN" in attempt["error"]
