"""Fixtures shared by the whole suite: a real redis-server, free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from smtpcheck.embedded_redis import EmbeddedRedis

# ---------------------------------------------------------------------------
# Order: what starts servers first (make test: pytest-xdist, README "Two commands")
# ---------------------------------------------------------------------------


def _weight(item: pytest.Item) -> int:
    """0 for e2e, 1 for a test sharing a module-scoped fixture (gunicorn, a
    browser, rendered charts), 2 for the rest."""
    if item.get_closest_marker("e2e"):
        return 0
    fixtures = getattr(item, "_fixtureinfo", None)
    defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
    return 1 if any(d and d[-1].scope in ("module", "package", "class") for d in defs) else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, each module's tests still together and in order.

    xdist hands out tests in collection order, a few at a time (--maxschedchunk
    in the Makefile): the long e2e modules then spread over the processes at
    the start, and the last tests handed out are quick ones, so no process is
    left with minutes of work while the others stand idle. The e2e modules
    with the most tests go first: each of the first chunks then holds a whole
    module, whose module fixtures (a service; in test_page.py a Chromium too)
    start once, not in two processes at the same time.
    """
    weights = {item: _weight(item) for item in items}
    e2e_in: dict[str, int] = {}  # module: its number of e2e tests
    for item, weight in weights.items():
        if weight == 0:
            e2e_in[str(item.path)] = e2e_in.get(str(item.path), 0) + 1
    # stable: each module's order is kept
    items.sort(key=lambda item: (weights[item], -e2e_in.get(str(item.path), 0)))


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
