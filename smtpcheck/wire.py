"""Batches of Redis commands sent as they are, on a connection one thread keeps,
on connections one long-lived object keeps, or on one of the client's pool.

redis-py spends about 100 Python calls on every pipeline it runs (a pool
checkout, retries, observability hooks) and about 19 more on every command
in it (options, parsing, reply callbacks): a third of a worker's Python work
per check. The worker's per-process threads (the transcript publisher) and
each check's thread send the same few kinds of batches again and again, and
the API sends one script per POST (the admission script, service/ratelimit.py,
with the check's writes as its arguments) and a batch of reads per GET (shared by
every request of a process: :func:`shared`), so they go through a :class:`Wire`
instead: the commands, as staged on a redis-py pipeline or built here, packed
in one go and written on a connection of the client's pool that the thread
keeps to itself (one checkout per thread, again after a fork), that the Wire
keeps for batches like it (one per batch in flight: the pool's checkout and
release, some 35 Python calls, once per connection, not per batch), or that it
takes for the batch, and the replies read raw, only looked at for errors. What
reaches Redis is the same commands; nothing reads these replies but
:meth:`Wire.execute`'s caller. It sits below ``service`` and ``workers``,
which both use it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.connection import ConnectionInterface

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py packs in Python then
    _hiredis_pack = None

Command = tuple[Any, ...]


class Script:
    """A Lua script as :meth:`Wire.script` sends it: its text, and the SHA1
    Redis names it by (``EVALSHA``; not a security use)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class Wire:
    """One client's Redis: on a connection of its own (``own``, for one
    long-lived thread), on connections it keeps (``keep``, for one object that
    lives as long as the client and sends from many threads or greenlets at once:
    one connection per batch in flight), or on one taken from the client's pool
    per batch. Kept connections are the pool's kind (Sentinel's included), made
    by the pool but kept out of it."""

    def __init__(self, client: redis.Redis, *, own: bool = False, keep: bool = False) -> None:
        self.client = client
        self.own = own
        self.keep = keep
        self._connection: ConnectionInterface | None = None
        self._idle: list[ConnectionInterface] = []
        self._pid = 0

    def _this_process(self) -> None:
        """After a fork the parent's connections are not this process's: new ones."""
        if self._pid != os.getpid():
            self._connection, self._idle, self._pid = None, [], os.getpid()

    def _for_this_process(self) -> ConnectionInterface:
        self._this_process()
        if self._connection is None:
            self._connection = self.client.connection_pool.make_connection()
        return self._connection

    def _taken(self) -> ConnectionInterface:
        """An idle kept connection, or a new one if none is idle."""
        self._this_process()
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self.client.connection_pool.make_connection()
        _ready(connection)
        return connection

    def execute(self, commands: list[Command], *, transaction: bool = False) -> list[Any]:
        """Send ``commands`` (in one ``MULTI``/``EXEC`` with ``transaction``)
        and return their replies, a failed command's as its ``ResponseError``.

        Redis unreachable: raises redis-py's ``ConnectionError`` or
        ``TimeoutError`` (the next call connects again). A transaction Redis
        refused whole (``EXECABORT``) raises the first command's error."""
        if self.own:
            connection = self._for_this_process()
            _ready(connection)
            return _send(connection, commands, transaction)
        if self.keep:
            connection = self._taken()
            try:
                return _send(connection, commands, transaction)
            finally:  # (disconnected by _send if the batch failed half way: it connects again)
                self._idle.append(connection)
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            return _send(connection, commands, transaction)
        finally:
            pool.release(connection)

    def close(self) -> None:
        """Disconnect the connections it keeps idle (and a thread's own): for a
        client that is closing. A batch in flight keeps its connection to its end."""
        idle, self._idle = self._idle, []
        if self._connection is not None:
            idle.append(self._connection)
            self._connection = None
        for connection in idle:
            connection.disconnect()

    def run(self, pipe: Pipeline, *, transaction: bool) -> list[Any]:
        """What ``pipe.execute()`` does, raising the first failed command's
        error; the replies are raw."""
        replies = self.execute(staged(pipe), transaction=transaction)
        pipe.reset()
        failed = first_error(replies)
        if failed is not None:
            raise failed
        return replies

    def command(self, *args: Any) -> Any:
        """One command's raw reply, raising its error as redis-py would."""
        (reply,) = self.execute([args])
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def script(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """``EVALSHA``, and ``EVAL`` once when Redis does not have the script
        (a restart, a failover), as redis-py's registered scripts do."""
        command = (len(keys), *keys, *args)
        try:
            return self.command("EVALSHA", script.sha, *command)
        except redis.exceptions.NoScriptError:
            return self.command("EVAL", script.text, *command)


def _ready(connection: ConnectionInterface) -> None:
    """A connection readied as the pool readies one at a checkout: connected by its
    own ``connect`` (Sentinel's asks for the primary, where a bare send would dial
    the default address), and connected again if Redis closed it (a restart) or a
    reply was left unread."""
    if not getattr(connection, "is_connected", False):  # (connect() of a connected one: 5 calls)
        connection.connect()
    try:
        if not connection.can_read():
            return
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        pass
    connection.disconnect()
    connection.connect()


def _send(connection: ConnectionInterface, commands: list[Command], transaction: bool) -> list[Any]:
    sent = [("MULTI",), *commands, ("EXEC",)] if transaction else commands
    replies: list[Any] = []
    try:
        connection.send_packed_command(_pack(connection, sent))
        for _ in sent:
            try:
                replies.append(connection.read_response())
            except redis.exceptions.ResponseError as exc:
                replies.append(exc)
    except BaseException:
        connection.disconnect()  # unread replies must not reach the next batch
        raise
    if not transaction:
        return replies
    executed = replies[-1]
    if isinstance(executed, BaseException):
        raise first_error(replies[1:-1]) or executed
    return list(executed)


def first_error(replies: list[Any]) -> BaseException | None:
    """The first failed command's error among ``replies`` (as :meth:`Wire.execute` gives them)."""
    return next((reply for reply in replies if isinstance(reply, BaseException)), None)


def _pack(connection: ConnectionInterface, commands: list[Command]) -> list[bytes]:
    """The bytes redis-py's packer makes (with hiredis it calls the same
    ``pack_command``), without its Python work per argument (~4 times the
    time of hiredis's own)."""
    encoder = getattr(connection, "encoder", None)
    encoding = str(getattr(encoder, "encoding", "")).lower().replace("-", "")
    if _hiredis_pack is None or encoding != "utf8":
        return list(connection.pack_commands(commands))
    packed = []
    for args in commands:
        name = args[0]
        try:
            if isinstance(name, str) and " " in name:
                raise TypeError("a command name of several words")  # redis-py splits it
            packed.append(_hiredis_pack(args))
        except TypeError:  # what redis-py converts first (a bytearray, a memoryview)
            packed.extend(connection.pack_command(*args))
    return [b"".join(packed)]


_wires: threading.local = threading.local()


def of(client: redis.Redis) -> Wire:
    """A :class:`Wire` to ``client``'s Redis on a connection of the calling
    thread's own (a per-process daemon thread's: made on first use)."""
    wires: weakref.WeakKeyDictionary[redis.Redis, Wire] | None = getattr(_wires, "by", None)
    if wires is None:
        wires = _wires.by = weakref.WeakKeyDictionary()
    wire = wires.get(client)
    if wire is None:
        wire = wires[client] = Wire(client, own=True)
    return wire


def kept(client: redis.Redis) -> Wire:
    """A :class:`Wire` to ``client``'s Redis on connections it keeps, one per
    batch in flight (for an object as long-lived as its client that sends from
    many threads or greenlets: keep the Wire, not a new one per batch)."""
    return Wire(client, keep=True)


_shared: weakref.WeakKeyDictionary[redis.Redis, Wire] = weakref.WeakKeyDictionary()


def shared(client: redis.Redis) -> Wire:
    """The one :func:`kept` Wire of ``client`` in this process, made on first use:
    for the many short-lived callers of a long-lived client (a request's reads),
    which share its kept connections rather than take one from the pool per batch."""
    found = _shared.get(client)
    if found is None:
        found = _shared.setdefault(client, Wire(client, keep=True))
    return found


def pooled(client: redis.Redis) -> Wire:
    """A :class:`Wire` to ``client``'s Redis on a connection of its pool per
    batch (for the many short-lived callers: a check's thread)."""
    return Wire(client)


def staged(pipe: Pipeline) -> list[Command]:
    """The commands staged on ``pipe`` (never executed itself), as sent."""
    return [args for args, _ in pipe.command_stack]
