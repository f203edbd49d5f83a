"""What a running check shows and obeys inside a worker process, in-process
against the session's real Redis: its transcript lines go out through one
publisher thread per process, its cancel flag is read by one watcher per
process, and a DELETE ends the check also while it waits at the politeness
gate or on DNS."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from smtpcheck.config import Settings, Timeouts
from smtpcheck.contract import (
    CANCEL_KEY_PREFIX,
    EVENTS_KEY_PREFIX,
    TARGET_SLOTS_PREFIX,
    check_request,
)
from tests.dns_server import DNSServer
from workers import cancel, events
from workers.engine import run_check
from workers.politeness import TargetGate
from workers.transcript import entry_json

#: A DELETE must end a running check within this long (DESIGN.md, DELETE).
CANCEL_WITHIN = 1.0


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def settings(**changes: Any) -> Settings:
    return Settings(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        helo_name="checker.test",
        timeouts=Timeouts(connect=10, command=10, total=20),
        **changes,
    )


def canceled_while_waiting(
    connection: redis.Redis, check: Callable[[], dict[str, Any]], check_id: str
) -> tuple[dict[str, Any], float]:
    """Run ``check`` as a worker does (watched), set its cancel flag once it
    waits, and return its result and the seconds from the flag to its end."""
    watcher = cancel.Watcher()
    done: list[dict[str, Any]] = []
    ended = threading.Event()

    def run() -> None:
        with cancel.watching(connection, check_id, watcher):
            done.append(check())
        ended.set()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)  # it is waiting by now (the wait it is in lasts 10 s or more)
    assert not ended.is_set()
    connection.set(CANCEL_KEY_PREFIX + check_id, "1")
    flagged = time.monotonic()
    ended.wait(10)
    took = time.monotonic() - flagged
    thread.join(10)
    print(f"{check_id}: canceled {took * 1000:.0f} ms after its flag was set")
    return done[0], took


def test_delete_ends_a_check_waiting_at_the_politeness_gate(connection: redis.Redis) -> None:
    check_settings = settings(allowed_ports=frozenset({2525}))
    request = check_request(check_settings, host="127.0.0.1", port=2525, tls="none")
    # Another check holds the only slot to 127.0.0.1 for the next minute.
    lease_ends = float(connection.time()[0]) + 60
    connection.zadd(TARGET_SLOTS_PREFIX + "127.0.0.1", {"another-check": lease_ends})

    result, took = canceled_while_waiting(
        connection,
        lambda: run_check(request, check_settings, gate=TargetGate(connection, 1)),
        "gate-check",
    )

    assert result["outcome"] == "canceled", result["summary"]
    assert result["stage"] == "connect"
    assert took < CANCEL_WITHIN, took
    said = [entry["text"] for entry in result["transcript"]]
    assert any(text.startswith("waiting for a free slot") for text in said), said
    assert not any(text.startswith("connecting to") for text in said), said  # never dialled
    assert connection.zcard(TARGET_SLOTS_PREFIX + "127.0.0.1") == 1  # took no slot


def test_delete_ends_a_check_waiting_on_dns(
    connection: redis.Redis, dns_server: Callable[..., DNSServer]
) -> None:
    server = dns_server({}, silent=["mute.test."])  # it never answers about this name
    check_settings = settings(dns_servers=(("127.0.0.1", server.port),), dns_timeout=10.0)
    request = check_request(check_settings, host="mute.test", port=25, tls="none")

    result, took = canceled_while_waiting(
        connection, lambda: run_check(request, check_settings), "dns-check"
    )

    assert result["outcome"] == "canceled", result["summary"]
    assert took < CANCEL_WITHIN, took
    said = [entry["text"] for entry in result["transcript"]]
    assert "resolving mute.test (A/AAAA)" in said
    assert server.queries  # it did ask, and was waiting for the answer


def test_delete_ends_a_domain_check_waiting_for_its_mx_records(
    connection: redis.Redis, dns_server: Callable[..., DNSServer]
) -> None:
    server = dns_server({}, silent=["mute.test."])
    check_settings = settings(dns_servers=(("127.0.0.1", server.port),), dns_timeout=10.0)
    request = check_request(check_settings, host="mute.test", mx=True)

    result, took = canceled_while_waiting(
        connection, lambda: run_check(request, check_settings), "mx-check"
    )

    assert result["outcome"] == "canceled", result["summary"]
    assert "looking up the MX records of mute.test" in result["summary"]
    assert took < CANCEL_WITHIN, took


def test_delete_reaches_every_host_of_a_domain_check_run_at_once(
    connection: redis.Redis, dns_server: Callable[..., DNSServer]
) -> None:
    """mx_hosts "all" checks its hosts in threads of a pool: each sees the
    cancel (and publishes its lines live), here while waiting at the gate."""
    zone = {
        "two.test.": {"MX": ["10 a.two.test.", "20 b.two.test."]},
        "a.two.test.": {"A": ["127.0.0.1"]},
        "b.two.test.": {"A": ["127.0.0.2"]},
    }
    server = dns_server(zone)
    check_settings = settings(dns_servers=(("127.0.0.1", server.port),))
    request = check_request(check_settings, host="two.test", mx=True, mx_hosts="all")
    lease_ends = float(connection.time()[0]) + 60
    for address in ("127.0.0.1", "127.0.0.2"):  # other checks hold both addresses' slots
        connection.zadd(TARGET_SLOTS_PREFIX + address, {"another-check": lease_ends})
    publisher = events.Publisher()

    def check() -> dict[str, Any]:
        with events.publishing(connection, "mx-all", 60, publisher):
            return run_check(request, check_settings, gate=TargetGate(connection, 1))

    result, took = canceled_while_waiting(connection, check, "mx-all")

    assert [host["outcome"] for host in result["hosts"]] == ["canceled", "canceled"]
    assert result["outcome"] == "canceled"
    assert took < CANCEL_WITHIN, took
    live = [
        fields[b"data"].decode() for _, fields in connection.xrange(EVENTS_KEY_PREFIX + "mx-all")
    ]
    assert sum("waiting for a free slot" in line for line in live) == 2, live


def test_one_watcher_reads_every_flag_in_one_round_trip(connection: redis.Redis) -> None:
    watcher = cancel.Watcher(poll=0.05)
    watches = [cancel.CancelWatch(connection, f"check-{n}") for n in range(50)]
    for watch in watches:
        watcher.add(watch)
    connection.set(CANCEL_KEY_PREFIX + "check-7", "1")
    time.sleep(0.5)
    looks = watcher.round_trips
    for watch in watches:
        watcher.discard(watch)

    assert [n for n, watch in enumerate(watches) if watch.requested()] == [7]
    assert 1 <= looks <= 0.5 / 0.05 + 2  # one MGET per poll for all 50, not one each


def test_lines_of_many_checks_go_out_together_in_order(connection: redis.Redis) -> None:
    publisher = events.Publisher()
    lines_each, checks = 10, 20
    start = threading.Barrier(checks)
    written: list[bool] = []

    def one(n: int) -> None:
        with events.publishing(connection, f"live-{n}", 60, publisher) as published:
            start.wait()
            for i in range(lines_each):
                published.line({"t_ms": float(i), "dir": "note", "text": f"line {i} of {n}"})
            written.append(published.finish())

    threads = [threading.Thread(target=one, args=(n,)) for n in range(checks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert written == [True] * checks  # finish() returned once the lines were in Redis
    for n in range(checks):
        rows = connection.xrange(EVENTS_KEY_PREFIX + f"live-{n}")
        texts = [fields[b"data"].decode() for _, fields in rows]
        assert [f'"line {i} of {n}"' in text for i, text in enumerate(texts)] == [True] * 10
        assert 0 < connection.ttl(EVENTS_KEY_PREFIX + f"live-{n}") <= 60
    # 200 lines: written in batches, not one round trip each.
    assert publisher.round_trips <= lines_each * checks / 2, publisher.round_trips


def test_a_line_is_in_redis_at_once_while_the_check_goes_on(connection: redis.Redis) -> None:
    publisher = events.Publisher()
    with events.publishing(connection, "live-one", 60, publisher) as published:
        handed = time.monotonic()
        published.line({"t_ms": 0.0, "dir": "server", "text": "220 slow.test ESMTP"})
        while not connection.xlen(EVENTS_KEY_PREFIX + "live-one"):
            assert time.monotonic() - handed < 2, "the line never reached Redis"
            time.sleep(0.002)
        visible = time.monotonic() - handed
        assert not published.finished  # the check is still running
    print(f"line visible after {visible * 1000:.1f} ms")
    assert visible < 0.5  # ~LINGER plus one round trip; generous for a loaded machine


def test_finish_adds_the_callers_commands_to_the_last_round_trip(
    connection: redis.Redis,
) -> None:
    publisher = events.Publisher()
    with events.publishing(connection, "live-last", 60, publisher) as published:
        published.line({"t_ms": 0.0, "dir": "note", "text": "done"})
        assert published.finish([("SET", "counted", "1")])
        trips = publisher.round_trips
    assert connection.get("counted") == b"1"
    assert connection.xlen(EVENTS_KEY_PREFIX + "live-last") == 1
    assert publisher.round_trips == trips  # leaving the block wrote nothing more


def test_ends_committed_at_once_go_out_whole_after_their_lines(connection: redis.Redis) -> None:
    """Checks ending together each commit their held end (last lines, then the
    result) from their own thread: each one whole in one transaction, never a result
    without all its lines; a failed command of one raises in that check's thread."""
    publisher = events.Publisher()
    lines_each, checks = 5, 12
    start = threading.Barrier(checks + 1)
    raised: dict[int, BaseException | None] = {}
    connection.set("live-end-not-a-number", "x")

    def one(n: int) -> None:
        key = f"live-end-{n}"
        with events.holding() as held, events.publishing(connection, key, 60, publisher) as out:
            for i in range(lines_each):
                out.line({"t_ms": float(i), "dir": "note", "text": f"line {i}"})
            out.finish()
            start.wait()
            failing = [("INCR", "live-end-not-a-number")] if n == 0 else []
            try:
                held.commit([*failing, ("SET", f"{key}-result", "1")])
                raised[n] = None
            except redis.exceptions.ResponseError as exc:
                raised[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(checks)]
    for thread in threads:
        thread.start()
    start.wait()
    seen_early = []
    while any(thread.is_alive() for thread in threads):
        for n in range(checks):  # a result in Redis has every line of its check beside it
            with connection.pipeline(transaction=True) as pipe:
                pipe.exists(f"live-end-{n}-result")
                pipe.xlen(EVENTS_KEY_PREFIX + f"live-end-{n}")
                result, lines = pipe.execute()
            if result and lines != lines_each:
                seen_early.append(n)
    for thread in threads:
        thread.join(10)

    assert seen_early == []
    assert isinstance(raised.pop(0), redis.exceptions.ResponseError)
    assert raised == dict.fromkeys(range(1, checks))
    for n in range(checks):
        assert connection.xlen(EVENTS_KEY_PREFIX + f"live-end-{n}") == lines_each
        assert connection.exists(f"live-end-{n}-result")
        assert 0 < connection.ttl(EVENTS_KEY_PREFIX + f"live-end-{n}") <= 60


def test_lines_of_one_batch_go_to_their_stream_as_one_xadd_each_would(
    connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several lines of a stream in one round trip (one script): the same
    entries, in order, capped the same way as an XADD per line."""
    monkeypatch.setattr(events, "_MAXLEN", "5")
    publisher = events.Publisher(linger=5.0)  # every line in the round trip of the end
    lines = [{"t_ms": float(i), "dir": "server", "text": f"250-line {i}"} for i in range(8)]
    with events.publishing(connection, "batched", 60, publisher) as published:
        for line in lines:
            published.line(line)
        assert published.finish()
    assert publisher.round_trips == 1
    for line in lines:  # one XADD per line, as the publisher sent them before
        connection.xadd(
            "one-by-one",
            {"event": "line", "data": entry_json(line)},
            maxlen=5,
            approximate=False,
        )
    batched = connection.xrange(EVENTS_KEY_PREFIX + "batched")
    assert [fields for _, fields in batched] == [
        fields for _, fields in connection.xrange("one-by-one")
    ]
    assert len(batched) == 5 and connection.ttl(EVENTS_KEY_PREFIX + "batched") > 0


def test_an_end_goes_out_after_a_write_already_in_flight(
    connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check's end is written by its own thread, but never ahead of a round
    trip already on its way: while another write holds on (Redis slow), the
    end waits, then goes out after it, with the check's lines before it."""
    monkeypatch.setattr(events, "FINISH_WAIT", 0.1)
    publisher = events.Publisher(linger=5.0)
    with events.publishing(connection, "in-flight", 60, publisher) as published:
        published.line({"t_ms": 0.0, "dir": "note", "text": "last line"})
        publisher._writing.acquire()  # another round trip is being written
        try:
            done = publisher.finish(connection, [("SET", "in-flight-end", "1")])
            assert not done.event.is_set()  # held behind that write, not sent ahead of it
            assert connection.get("in-flight-end") is None
            assert connection.xlen(EVENTS_KEY_PREFIX + "in-flight") == 0
        finally:
            publisher._writing.release()
        assert done.wait(5)  # the publisher's thread wrote it once that write was done
        published.finished = True
    assert connection.get("in-flight-end") == b"1"
    assert connection.xlen(EVENTS_KEY_PREFIX + "in-flight") == 1


def test_a_watcher_looks_on_a_while_after_its_checks_then_waits_for_the_next(
    connection: redis.Redis,
) -> None:
    """Between two checks the watcher goes on looking (a new check needs no
    wake-up of it on the way to its connect); idle past ``idle`` it waits,
    and the next check wakes it: either way that check's flag is read."""
    watcher = cancel.Watcher(poll=0.02, idle=0.2)

    def flag_is_read(check_id: str) -> bool:
        watch = cancel.CancelWatch(connection, check_id)
        connection.set(CANCEL_KEY_PREFIX + check_id, "1")
        watcher.add(watch)
        ends = time.monotonic() + 5
        while not watch.requested() and time.monotonic() < ends:
            time.sleep(0.01)
        watcher.discard(watch)
        return watch.requested()

    assert flag_is_read("first")
    assert not watcher.parked  # still looking, just after its check
    assert flag_is_read("soon-after")
    ends = time.monotonic() + 5
    while not watcher.parked and time.monotonic() < ends:
        time.sleep(0.01)
    assert watcher.parked  # idle: it waits instead of waking every poll
    looks = watcher.round_trips
    assert flag_is_read("after-a-pause")  # and the next check wakes it
    assert watcher.round_trips > looks


def test_a_checks_start_goes_out_with_its_first_line_ahead_of_it(connection: redis.Redis) -> None:
    """A check's start wakes no thread; the check's first line does, and the
    start goes out with it, ahead of it, without waiting for the check's end."""
    publisher = events.Publisher()
    publisher.start(connection, [("SET", "started-with-a-line", "1")], "quiet", wake=False)
    with events.publishing(connection, "quiet", 60, publisher) as published:
        published.line({"t_ms": 0.0, "dir": "note", "text": "connecting to 192.0.2.1:25"})
        ends = time.monotonic() + 5
        while not connection.xlen(EVENTS_KEY_PREFIX + "quiet") and time.monotonic() < ends:
            time.sleep(0.002)
        assert connection.get("started-with-a-line") == b"1"
        assert connection.xlen(EVENTS_KEY_PREFIX + "quiet") == 1
        assert not published.finished  # the check is still running
