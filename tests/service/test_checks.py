"""The /v1 checks API against a real Redis and real RQ workers."""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from service.jobstore import JobStore
from smtpcheck.sealing import unseal
from tests.security.leaks import find, needles, redis_values
from tests.service import jobs
from tests.service.conftest import ALICE, BOB, submit

PASSWORD = "pw-7f3a-UNIQUE-never-in-redis"


def test_post_queues_a_json_job_with_the_contracted_shape(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = {
        "host": "mx.example.com",
        "auth": {"username": "user@example.com", "password": PASSWORD},
        "mail_from": "a@example.org",
        "rcpt_to": ["b@example.com"],
        "timeouts": {"total": 100},
    }
    response = client.post("/v1/checks", json=body, headers=ALICE)

    assert response.status_code == 202
    created = response.get_json()
    check_id = created["id"]
    assert response.headers["Location"] == f"/v1/checks/{check_id}"
    assert created["status"] == "queued"
    assert created["vantage"] == "default"
    assert created["created_at"].endswith("Z")
    assert created["links"]["self"] == f"/v1/checks/{check_id}"

    assert redis_client.lrange("rq:queue:vantage:default", 0, -1) == [check_id.encode()]
    raw = redis_client.hgetall(f"rq:job:{check_id}")
    assert raw[b"description"] == b"smtpcheck"
    assert int(raw[b"timeout"]) == 130
    func, _instance, args, kwargs = json.loads(zlib.decompress(raw[b"data"]))  # JSON, not pickle
    assert func == "workers.job.run_check_job"
    assert args == []
    assert set(kwargs) == {"request", "sealed_password"}
    assert kwargs["request"]["auth"] == {
        "username": "user@example.com",
        "password": "****",
        "mechanism": "auto",
        "allow_plaintext": False,
    }
    assert unseal(kwargs["sealed_password"], "test-secret") == PASSWORD
    assert json.loads(raw[b"meta"]) == {
        "owner": "alice",
        "vantage": "default",
        "request_id": response.headers["X-Request-ID"],  # so worker logs can name it
    }

    job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
    assert job.result_ttl == job.failure_ttl == 7 * 24 * 3600

    # the password, its base64 forms and the PLAIN blob: nowhere in any key
    assert find(redis_values(redis_client), needles("user@example.com", PASSWORD)) == []


def test_normalized_request_has_every_default(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "Mail.Example.COM."})

    request = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["request"]

    assert request == {
        "host": "mail.example.com",
        "mx": False,
        "port": 25,
        "tls": "auto",
        "tls_name": None,
        "tls_ca": None,
        "tls_verify": False,
        "helo": None,
        "auth": None,
        "mail_from": None,
        "rcpt_to": [],
        "data": None,
        "message": None,
        "stop_after": None,
        "timeouts": {"connect": 10.0, "command": 30.0, "total": 60.0},
        "vantage": "default",
        "ip_version": None,
        "mx_hosts": "first",
        "probes": [],
        "retry_temporary": False,
        "retry": {"attempts": 3, "delay": 300.0},
        "callback": None,
    }


def test_message_defaults_are_filled(client: FlaskClient) -> None:
    body = {
        "host": "mx.example.com",
        "mail_from": "",
        "rcpt_to": ["b@example.com"],
        "message": {"headers": {"X-Test": "1"}},
    }
    check_id = submit(client, body)

    message = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["request"]["message"]

    assert message["subject"] == "smtpcheck test message"
    assert message["body"]
    assert message["headers"] == {"X-Test": "1"}


def test_idn_host_is_sent_as_a_labels(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "bücher.例え.jp", "helo": "prüfer.example"})

    request = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["request"]

    assert request["host"] == "xn--bcher-kva.xn--r8jz45g.jp"
    assert request["helo"] == "xn--prfer-lva.example"


def test_bracketed_ipv6_literal_is_normalized(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "[2001:4860:4860:0:0:0:0:8888]"})

    request = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["request"]

    assert request["host"] == "2001:4860:4860::8888"


def test_allowed_network_lets_loopback_through(client: FlaskClient) -> None:
    submit(client, {"host": "127.0.0.1", "port": 2525})


def test_fresh_check_is_queued(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "mx.example.com"})

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()

    assert body["status"] == "queued"
    assert body["started_at"] is None and body["ended_at"] is None
    assert body["result"] is None and body["error"] is None


def test_finished_check_has_result_and_transcript(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool]
) -> None:
    store.job_function = jobs.FUNCTION
    check_id = submit(client, {"host": "mx.example.com"})
    run_worker()

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    transcript = client.get(f"/v1/checks/{check_id}/transcript", headers=ALICE)

    assert body["status"] == "finished"
    assert body["result"]["outcome"] == "ok"
    assert body["error"] is None
    assert body["started_at"] and body["ended_at"]
    assert transcript.status_code == 200
    assert transcript.mimetype == "text/plain"
    assert "220 mx.example.com ESMTP" in transcript.get_data(as_text=True)


def test_finished_check_without_report_module(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool]
) -> None:
    store.job_function = jobs.FUNCTION
    check_id = submit(
        client, {"host": "mx.example.com", "auth": {"username": "u", "password": "p"}}
    )
    run_worker()

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()

    assert body["status"] == "finished"
    assert body["result"]["ok"] is True
    assert body["result"]["summary"].endswith("(a sealed password came with it)")
    assert body["request"]["auth"]["password"] == "****"
    assert body["started_at"] <= body["ended_at"]


def test_crashed_job_reads_as_failed_with_a_reason(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool]
) -> None:
    store.job_function = jobs.CRASH
    check_id = submit(client, {"host": "mx.example.com"})
    run_worker()

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    transcript = client.get(f"/v1/checks/{check_id}/transcript", headers=ALICE)

    assert body["status"] == "failed"
    assert body["result"] is None
    assert "RuntimeError: engine exploded" in body["error"]
    assert transcript.status_code == 409
    assert transcript.mimetype == "application/problem+json"


def test_wait_returns_as_soon_as_the_job_finishes(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool]
) -> None:
    store.job_function = jobs.FUNCTION
    check_id = submit(client, {"host": "mx.example.com"})
    seen: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        response = client.get(f"/v1/checks/{check_id}?wait=20", headers=ALICE)
        seen["elapsed"] = time.monotonic() - started
        seen["body"] = response.get_json()

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive(), "the GET did not wait"
    run_worker()  # in the main thread: RQ installs signal handlers
    waiter.join(timeout=10)

    assert seen["body"]["status"] == "finished"
    assert 0.4 < seen["elapsed"] < 5


def test_reading_a_check_takes_one_round_trip_and_its_wake_up_none(
    client: FlaskClient,
    store: JobStore,
    run_worker: Callable[..., bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check is read with its result (and the fan-out record its id could name) in
    one round trip, a held GET's hold taken in the same; it then blocks on the result
    stream with the commands that read the check again and give the hold back behind
    the XREAD, in one more."""
    store.job_function = jobs.FUNCTION
    sent: dict[int, int] = {}
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[threading.get_ident()] = sent.get(threading.get_ident(), 0) + 1
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    def waited_for(check_id: str) -> tuple[dict[str, Any], int]:
        seen: dict[str, Any] = {}

        def poll() -> None:
            response = client.get(f"/v1/checks/{check_id}?wait=20", headers=ALICE)
            seen["body"] = response.get_json()
            seen["round trips"] = sent.get(threading.get_ident())

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(0.5)
        run_worker()  # in the main thread: RQ installs signal handlers
        waiter.join(timeout=10)
        return seen["body"], seen["round trips"]

    waited_for(submit(client, {"host": "mx.example.com"}))  # connections made, scripts loaded
    sent.clear()
    body, round_trips = waited_for(submit(client, {"host": "mx.example.com"}))
    sent.clear()
    again = client.get(f"/v1/checks/{body['id']}", headers=ALICE).get_json()

    assert body["status"] == "finished"
    assert round_trips == 2  # read + take the hold, XREAD + read + give it back
    assert again == body
    assert sent == {threading.get_ident(): 1}


def test_a_held_answer_is_the_stored_check_as_compact_json(
    client: FlaskClient,
    store: JobStore,
    redis_client: redis.Redis,
    run_worker: Callable[..., bool],
) -> None:
    """The bytes of a GET ?wait's answer: the check's document built from what is in
    Redis (the job hash and its latest result), in its key order, as compact JSON;
    the same bytes as a plain GET's afterwards."""
    store.job_function = jobs.FUNCTION
    check_id = submit(client, {"host": "mx.example.com"})
    seen: dict[str, Any] = {}

    def poll() -> None:
        seen["response"] = client.get(f"/v1/checks/{check_id}?wait=20", headers=ALICE)

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)
    run_worker()  # in the main thread: RQ installs signal handlers
    waiter.join(timeout=10)
    held = seen["response"]

    raw = redis_client.hgetall(f"rq:job:{check_id}")
    _func, _instance, _args, kwargs = json.loads(zlib.decompress(raw[b"data"]))
    ((_, latest),) = redis_client.xrevrange(f"rq:results:{check_id}", count=1)

    def moment(field: bytes) -> str:  # RQ's microseconds, to the millisecond
        return raw[field].decode()[:23] + "Z"

    document = {
        "id": check_id,
        "status": "finished",
        "vantage": "default",
        "created_at": moment(b"created_at"),
        "started_at": moment(b"started_at"),
        "ended_at": moment(b"ended_at"),
        "request": kwargs["request"],
        "result": json.loads(base64.b64decode(latest[b"return_value"])),
        "error": None,
        "links": {
            "self": f"/v1/checks/{check_id}",
            "transcript": f"/v1/checks/{check_id}/transcript",
        },
    }
    body = json.dumps(document, separators=(",", ":")).encode() + b"\n"  # as Flask ends it
    assert held.status_code == 200
    assert held.get_data() == body
    assert held.headers["Content-Type"] == "application/json"
    assert held.headers["Content-Length"] == str(len(body))
    plain = client.get(f"/v1/checks/{check_id}", headers=ALICE)
    assert plain.get_data() == body
    assert dict(plain.headers.items()).keys() == dict(held.headers.items()).keys()


def test_wait_times_out_on_a_queued_check(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "mx.example.com"})
    started = time.monotonic()

    response = client.get(f"/v1/checks/{check_id}?wait=1", headers=ALICE)

    assert 0.9 < time.monotonic() - started < 4
    assert response.get_json()["status"] == "queued"


@pytest.mark.parametrize("wait", ["-1", "61", "1.5", "abc", "", "\uff11"])
def test_invalid_wait_is_422(client: FlaskClient, wait: str) -> None:
    check_id = submit(client, {"host": "mx.example.com"})

    response = client.get(f"/v1/checks/{check_id}?wait={wait}", headers=ALICE)

    assert response.status_code == 422
    assert "wait" in response.get_json()["errors"]


def test_transcript_of_a_queued_check_is_the_lines_so_far(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "mx.example.com"})

    response = client.get(f"/v1/checks/{check_id}/transcript", headers=ALICE)

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.data == b""  # no worker has started it yet


def test_delete_cancels_a_queued_check(
    client: FlaskClient, redis_client: redis.Redis, run_worker: Callable[..., bool]
) -> None:
    check_id = submit(client, {"host": "mx.example.com"})

    response = client.delete(f"/v1/checks/{check_id}", headers=ALICE)

    assert response.status_code == 202
    assert response.get_json()["status"] == "canceled"
    assert redis_client.llen("rq:queue:vantage:default") == 0
    run_worker()  # nothing left to run
    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert body["status"] == "canceled"
    assert body["error"] == "the check was canceled before it ran"
    # Ended now: a second DELETE deletes it, and everything kept for it.
    response = client.delete(f"/v1/checks/{check_id}", headers=ALICE)
    assert response.status_code == 204
    assert response.data == b""
    assert client.get(f"/v1/checks/{check_id}", headers=ALICE).status_code == 404
    assert not redis_client.exists(f"rq:job:{check_id}")
    assert not redis_client.exists(f"smtpcheck:cancel:{check_id}")
    assert check_id.encode() not in redis_client.zrange("smtpcheck:checks:alice", 0, -1)


def test_delete_removes_a_finished_check(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool], redis_client: redis.Redis
) -> None:
    store.job_function = jobs.FUNCTION
    check_id = submit(client, {"host": "mx.example.com"})
    run_worker()

    assert client.delete(f"/v1/checks/{check_id}", headers=ALICE).status_code == 204
    assert client.get(f"/v1/checks/{check_id}", headers=ALICE).status_code == 404
    assert not redis_client.exists(f"rq:results:{check_id}")


def test_checks_are_private_to_their_key(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "mx.example.com"})

    for method, path in (
        ("get", f"/v1/checks/{check_id}"),
        ("get", f"/v1/checks/{check_id}/transcript"),
        ("delete", f"/v1/checks/{check_id}"),
    ):
        response = getattr(client, method)(path, headers=BOB)
        assert response.status_code == 404, path
        assert response.get_json()["type"] == "urn:smtpcheck:problem:check-not-found"
    assert client.get(f"/v1/checks/{check_id}", headers=ALICE).status_code == 200


@pytest.mark.parametrize(
    "check_id", ["00000000-0000-4000-8000-000000000000", "nope", "a" * 300, "x:y", "..%2f"]
)
def test_unknown_or_malformed_id_is_404(client: FlaskClient, check_id: str) -> None:
    response = client.get(f"/v1/checks/{check_id}", headers=ALICE)

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_a_job_not_made_by_the_service_is_404(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue("workers.job.run_check_job", kwargs={}, meta={"owner": "alice"})

    assert client.get(f"/v1/checks/{job.id}", headers=ALICE).status_code == 404


def test_vantages_lists_default_and_known_queues(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    submit(client, {"host": "mx.example.com"})
    Queue("vantage:paris", connection=redis_client, serializer=JSONSerializer).enqueue(
        "workers.job.run_check_job", kwargs={}, description="smtpcheck"
    )

    response = client.get("/v1/vantages", headers=ALICE)

    assert response.status_code == 200
    assert response.get_json() == [
        {"name": "default", "workers": 0, "queued": 1},
        {"name": "paris", "workers": 0, "queued": 1},
    ]


def test_unknown_vantage_is_422(client: FlaskClient) -> None:
    response = client.post(
        "/v1/checks", json={"host": "mx.example.com", "vantage": "nowhere"}, headers=ALICE
    )

    assert response.status_code == 422
    assert "vantage" in response.get_json()["errors"]
