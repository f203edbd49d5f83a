"""smtpcheck.wire: batches of commands sent as they are, against the session's Redis."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from rq.job import JobStatus

from smtpcheck import wire


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


WAYS = {"own": wire.of, "kept": wire.kept, "pooled": wire.pooled}


@pytest.mark.parametrize("way", list(WAYS))
def test_replies_come_back_raw_with_a_failed_command_in_its_place(
    client: redis.Redis, way: str
) -> None:
    client.set("text", "a")
    batch = WAYS[way](client)
    commands = [("HSET", "h", "f", 1), ("HINCRBY", "text", "f", 1), ("HGET", "h", "f")]
    replies = batch.execute(commands)
    assert replies[0] == 1 and replies[2] == b"1"
    assert isinstance(replies[1], redis.exceptions.ResponseError)  # WRONGTYPE, the rest ran
    replies = batch.execute([("INCR", "n"), ("HINCRBY", "text", "f", 1)], transaction=True)
    assert replies[0] == 1 and isinstance(replies[1], redis.exceptions.ResponseError)
    with pytest.raises(redis.exceptions.ResponseError):  # refused whole: nothing ran
        batch.execute([("INCR", "n"), ("INCR",)], transaction=True)
    assert client.get("n") == b"1"


def test_a_threads_own_connection_comes_back_after_redis_closed_it(client: redis.Redis) -> None:
    own = wire.of(client)
    assert own is wire.of(client)  # one per thread and client
    own.execute([("CLIENT", "SETNAME", "wire-test")])
    for line in client.client_list():
        if line.get("name") == "wire-test":
            client.client_kill_filter(_id=line["id"])
    assert own.execute([("ECHO", "again")]) == [b"again"]  # reconnected, not failed


def test_a_kept_wire_keeps_one_connection_per_batch_in_flight(client: redis.Redis) -> None:
    kept = wire.kept(client)
    (first,) = kept.execute([("CLIENT", "ID")])
    assert kept.execute([("CLIENT", "ID")]) == [first]  # the same connection, kept

    def blocked() -> None:  # a batch in flight on a thread
        replies.extend(kept.execute([("BLPOP", "list", 5)]))

    replies: list[object] = []
    thread = threading.Thread(target=blocked)
    thread.start()
    deadline = time.monotonic() + 5
    while not any(line.get("cmd") == "blpop" for line in client.client_list()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (second, _) = kept.execute([("CLIENT", "ID"), ("RPUSH", "list", "x")])  # meanwhile
    thread.join(5)
    assert replies == [[b"list", b"x"]] and second != first
    assert {kept.execute([("CLIENT", "ID")])[0] for _ in range(3)} <= {first, second}

    client.client_kill_filter(_id=first)  # Redis closed one (as a restart does)
    client.client_kill_filter(_id=second)
    assert kept.execute([("ECHO", "again")]) == [b"again"]  # connected again, not failed


def test_a_kept_wire_makes_new_connections_after_a_fork(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = wire.kept(client)
    (parents,) = kept.execute([("CLIENT", "ID")])
    monkeypatch.setattr(os, "getpid", lambda: -1)  # this process is now a child
    (childs,) = kept.execute([("CLIENT", "ID")])
    assert childs != parents


def test_a_pipeline_runs_as_staged_and_a_script_is_loaded_once_missing(
    client: redis.Redis,
) -> None:
    pipe = client.pipeline()
    pipe.hset("job", mapping={"a": "1", "b": "2"})
    pipe.expire("job", 30)
    batch = wire.pooled(client)
    assert batch.run(pipe, transaction=True) == [2, 1]
    assert not pipe.command_stack
    script = wire.Script("return redis.call('HGET', KEYS[1], ARGV[1])")
    client.script_flush()
    assert client.script_load(script.text) == script.sha  # Redis names it so
    client.script_flush()  # as after a restart: EVALSHA fails, EVAL runs it
    assert batch.script(script, ["job"], ["b"]) == b"2"


def test_one_command_gives_its_raw_reply_or_raises_its_error(client: redis.Redis) -> None:
    own = wire.of(client)
    client.set("flag", "up")
    assert own.command("MGET", "flag", "none") == [b"up", None]
    client.rpush("list", "x")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        own.command("GET", "list")
    assert own.command("ECHO", "after") == b"after"  # the connection is still good


def test_commands_are_packed_to_the_bytes_redis_py_sends(client: redis.Redis) -> None:
    connection = client.connection_pool.make_connection()
    commands: list[wire.Command] = [
        ("XADD", "smtpcheck:events:x", "MAXLEN", "1000", "*", "data", '{"text": "ü 250"}'),
        ("ZADD", "z", 1.0, b"\x00\xff", 0.1 + 0.2, "m"),
        ("HINCRBY", "h", "n", -5),
        ("HSET", "rq:job:x", "status", JobStatus.QUEUED),  # a str enum, as RQ stages it
        ("CLIENT SETNAME", "two-words"),  # redis-py splits the name
        ("SET", "k", memoryview(b"view")),  # redis-py converts it first
    ]
    assert b"".join(wire._pack(connection, commands)) == b"".join(
        connection.pack_commands(commands)
    )
    connection.disconnect()


def test_a_clients_shared_wire_keeps_its_connections_until_closed(client: redis.Redis) -> None:
    shared = wire.shared(client)
    assert wire.shared(client) is shared  # one per client in a process
    (first,) = shared.execute([("CLIENT", "ID")])
    assert shared.execute([("CLIENT", "ID")]) == [first]  # kept, not checked out anew

    shared.close()  # as the client closes
    assert all(int(line["id"]) != first for line in client.client_list())
    (again,) = shared.execute([("CLIENT", "ID")])  # a batch after it connects again
    assert again != first
