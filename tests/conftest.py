"""Fixtures shared by the whole suite: a real redis-server, free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from smtpcheck.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server for the whole session, stopped at the end."""
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")), persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The session's Redis, emptied before each test that asks for it."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


# ---------------------------------------------------------------------------
# SMTP peers (see tests/smtp_servers.py)
# ---------------------------------------------------------------------------

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from tests.smtp_servers import Certificates, ScriptedServer, SMTPTarget  # noqa: E402


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_target(certificates: Certificates) -> Iterator[Callable[..., SMTPTarget]]:
    """Factory: ``smtp_target(tls="starttls", ...)`` starts an aiosmtpd target."""
    started: list[SMTPTarget] = []

    def start(**kwargs: Any) -> SMTPTarget:
        target = SMTPTarget(certificates, **kwargs).start()
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@pytest.fixture
def scripted_server() -> Iterator[Callable[..., ScriptedServer]]:
    """Factory: ``scripted_server(script)`` starts a misbehaving server."""
    started: list[ScriptedServer] = []

    def start(script: Callable[..., None], host: str = "127.0.0.1") -> ScriptedServer:
        server = ScriptedServer(script, host).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


from tests.dns_server import dns_server  # noqa: E402, F401
from tests.webhook_receiver import receiver  # noqa: E402, F401
