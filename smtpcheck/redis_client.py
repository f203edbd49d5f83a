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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands import READ_COMMANDS
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection
from redis.utils import SENTINEL

from .config import ConfigError, Settings

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
#: Commands sent again after a connection error: reads, which change nothing.
RETRIED_COMMANDS = frozenset(READ_COMMANDS | {"PING", "INFO", "MEMORY USAGE", "CLIENT LIST"})
#: About 1.5 s of retries (0.1 + 0.2 + 0.4 + 0.8), longer than sentinels need
#: to hand out a promoted replica once they agree the primary is down.
READ_RETRIES = 4
READ_BACKOFF = ExponentialBackoff(cap=0.8, base=0.05)


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_url(url: str) -> str | SentinelTarget:
    """Check ``url`` is one ``REDIS_URL`` takes; sentinel URLs come back parsed.

    Raises ``ConfigError`` naming ``REDIS_URL`` with what is wrong.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not rest or scheme not in SCHEMES:
        raise ConfigError(
            "REDIS_URL",
            f"must start with one of {', '.join(s + '://' for s in SCHEMES)}",
        )
    if not scheme.endswith("+sentinel"):
        return url
    # urlsplit cannot read a netloc with several host:port pairs; split it ourselves.
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            parsed = urlsplit("//" + item)
            host, port = parsed.hostname, parsed.port or SENTINEL_PORT
        except ValueError:
            host = None
        if not host:
            raise ConfigError("REDIS_URL", "a sentinel address is not host:port")
        sentinels.append((host, port))
    if not sentinels:
        raise ConfigError("REDIS_URL", "names no sentinel (redis+sentinel://host:port/service)")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ConfigError(
            "REDIS_URL", "must end in /<service> or /<service>/<db> after the sentinels"
        )
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ConfigError("REDIS_URL", "the database after the service is not a number")
        db = int(parts[1])
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss+sentinel",
    )


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


def _command_name(args: tuple[Any, ...]) -> str:
    name = str(args[0]).upper()
    if " " not in name and len(args) > 1 and name in ("MEMORY", "CLIENT"):
        name = f"{name} {str(args[1]).upper()}"
    return name


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
    target = parse_url(url)
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": read_timeout,
        "socket_keepalive": True,
        "health_check_interval": health_check_interval,
        # No blind resend (redis-py's default retries every command three times):
        # reads are retried by FailoverRedis, writes not at all.
        "retry": Retry(NoBackoff(), 0),
    }
    tls = _tls_options(settings)
    if isinstance(target, SentinelTarget):
        auth = {"username": target.username, "password": target.password}
        auth = {key: value for key, value in auth.items() if value is not None}
        sentinel_options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": min(read_timeout or 2.0, 2.0),
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
