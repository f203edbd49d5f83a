"""The one way smtpcheck opens Redis: ``REDIS_URL`` in, a client out.

``REDIS_URL`` takes ``redis://``, ``rediss://`` (TLS), ``unix://`` and
``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/db]``
(``rediss+sentinel://`` is the same over TLS). The API, the workers, the
rate limiter, the politeness gate, metrics, the RQ queues and the event
streams all get their client from :func:`connect`, so they agree on the
primary and on how a failover is followed:

- every new connection asks the sentinels where the primary is, so once they
  have promoted a replica the next command reaches it (redis-py's
  ``SentinelManagedConnection``; a primary demoted to replica answers READONLY,
  which it turns into a reconnect);
- reads that cannot change anything (redis-py's ``READ_COMMANDS``, plus PING
  and INFO) are retried with a short exponential backoff when the connection
  fails, which rides over the few seconds of a failover;
- writes are never retried here: a write whose reply was lost may have been
  applied, and sending it again could queue a check twice. It fails at once
  with a ``ConnectionError`` and the API answers 503 (service/problems.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import Pipeline
from redis.commands import READ_COMMANDS
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection
from redis.utils import SENTINEL

from .config import SentinelTarget, Settings, parse_redis_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: Commands sent again after a connection error: reads, which change nothing.
RETRIED_COMMANDS = frozenset(READ_COMMANDS | {"PING", "INFO", "MEMORY USAGE", "CLIENT LIST"})
#: About 1.5 s of retries (0.1 + 0.2 + 0.4 + 0.8), longer than sentinels need
#: to hand out a promoted replica once they agree the primary is down.
READ_RETRIES = 4
READ_BACKOFF = ExponentialBackoff(cap=0.8, base=0.05)


class SentinelConnection(SentinelManagedConnection):
    """redis-py's connection to a sentinel-named server, closed when a reply is cut short.

    Its own class keeps a reply half read when reading is interrupted (a
    signal handler raising, as RQ's on SIGTERM, or a timeout), unlike the
    plain connection; the next command on it would then read the old reply
    (RQ's register_death failed with "Wrong number of response items").
    """

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        timeout: float | object = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        return super().read_response(
            disable_decoding=disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class SentinelSSLConnection(SentinelConnection, SSLConnection):
    """The same over TLS."""


def uses_sentinel(url: str | None) -> bool:
    """Whether ``url`` names its primary through sentinels."""
    return url is not None and url.lower().partition("://")[0].endswith("+sentinel")


class FailoverRedis(redis.Redis):
    """A client that retries reads across a failover and never resends a write."""

    read_retry = Retry(READ_BACKOFF, READ_RETRIES, supported_errors=(redis.ConnectionError,))

    def execute_command(self, *args: Any, **options: Any) -> Any:
        send: Callable[[], Any] = lambda: super(FailoverRedis, self).execute_command(  # noqa: E731
            *args, **options
        )
        if args and _command_name(args) in RETRIED_COMMANDS:
            return self.read_retry.call_with_retry(send, lambda _error: None)
        return send()

    def read_pipeline(self, stage: Callable[[Pipeline], object]) -> list[Any]:
        """The replies to the reads ``stage`` puts on a pipeline, in one round trip,
        retried like a single read (the pipeline is staged afresh for each try).
        Reads only: a write in it could be sent twice."""

        def send() -> list[Any]:
            with self.pipeline(transaction=False) as pipe:
                stage(pipe)
                return pipe.execute()

        return self.read_retry.call_with_retry(send, lambda _error: None)


class Outage:
    """Redis not answering the many threads of one process that retry, logged
    once per episode: a WARNING from the first caller that fails, an INFO from
    the first that gets through again, with how long it lasted (instead of a
    line per check and try). Thread-safe."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.since: float | None = None
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> bool:
        """Count a failure; True for the one that began the episode (it logged)."""
        with self._lock:
            began = self.since is None
            if began:
                self.since = time.monotonic()
        if began:
            self.log.warning("%s: Redis is not answering (%s); retrying", self.what, error)
        return began

    def answered(self) -> None:
        """A caller that had failed got through: the episode ends (logged once)."""
        with self._lock:
            since, self.since = self.since, None
        if since is not None:
            self.log.info(
                "%s: Redis answers again after %.1f s", self.what, time.monotonic() - since
            )


def _command_name(args: tuple[Any, ...]) -> str:
    name = str(args[0]).upper()
    if " " not in name and len(args) > 1 and name in ("MEMORY", "CLIENT"):
        name = f"{name} {str(args[1]).upper()}"
    return name


#: Connections one client's pool may open. redis-py 6 and later stop at 100 and
#: then raise ``MaxConnectionsError`` for the next command; every process here
#: bounds how many commands it has in flight itself (a worker's ``--concurrency``
#: threads, an API process's gunicorn connections and ``SMTPCHECK_MAX_HELD``), so
#: the pool must not fail below those: a worker's 101st check entering the
#: politeness gate at once would otherwise go ungated, and an API process's 101st
#: held ``?wait`` would fail.
MAX_CONNECTIONS = 2**31 - 1


def connect(
    source: Settings | str | None,
    *,
    read_timeout: float | None = 5.0,
    connect_timeout: float = 2.0,
    health_check_interval: int = 15,
) -> FailoverRedis:
    """The Redis client for ``source`` (Settings, or a ``REDIS_URL`` for tests and tools).

    ``read_timeout`` bounds every reply (None: wait for ever; RQ's workers
    raise it themselves around blocking pops). Nothing is sent here: the
    first command makes the first connection.
    """
    settings = source if isinstance(source, Settings) else Settings(redis_url=source)
    url = settings.redis_url or DEFAULT_URL
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": read_timeout,
        "socket_keepalive": True,
        "health_check_interval": health_check_interval,
        # No blind resend (redis-py's default retries every command three times):
        # reads are retried by FailoverRedis, writes not at all.
        "retry": Retry(NoBackoff(), 0),
        "max_connections": MAX_CONNECTIONS,
    }
    tls = _tls_options(settings)
    if isinstance(target, SentinelTarget):
        auth = {"username": target.username, "password": target.password}
        auth = {key: value for key, value in auth.items() if value is not None}
        sentinel_options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": min(read_timeout or 2.0, 2.0),
            # A sentinel that is down or refuses is skipped for the next one at
            # once (redis-py's default would retry it three times, backing off
            # for seconds, on every new connection).
            "retry": Retry(NoBackoff(), 0),
            **auth,
        }
        if target.tls:
            sentinel_options.update(ssl=True, **tls)
            options.update(tls)
        sentinel = Sentinel(
            list(target.sentinels), sentinel_kwargs=sentinel_options, **options, **auth
        )
        client = sentinel.master_for(
            target.service,
            redis_class=FailoverRedis,
            connection_class=SentinelSSLConnection if target.tls else SentinelConnection,
            db=target.db,
        )
        return cast(FailoverRedis, client)
    if url.lower().startswith("rediss://"):
        options.update(tls)
    return cast(FailoverRedis, FailoverRedis.from_url(url, **options))


def _tls_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    if settings.redis_cert_file:
        options["ssl_certfile"] = settings.redis_cert_file
    if settings.redis_key_file:
        options["ssl_keyfile"] = settings.redis_key_file
    return options
