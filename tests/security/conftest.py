"""Fixtures for the safety tests: an API that allows no private network, and
a witness listener that records every connection made to it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from smtpcheck.config import Settings

API_KEYS = "alice:key-alice,bob:key-bob"
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
SECRET = "security-test-secret"


@pytest.fixture
def api_settings(redis_url: str) -> Settings:
    """Production-like: no SMTPCHECK_ALLOW_NETWORKS, default ports and limits."""
    return Settings(redis_url=redis_url, secret_key=SECRET, api_keys=API_KEYS)


@pytest.fixture
def make_app(api_settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Factory: ``make_app(**settings_changes)``; every app made is closed after the test."""
    made: list[Flask] = []

    def make(**changes: object) -> Flask:
        app = create_app(api_settings.replace(**changes))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["smtpcheck"].close()


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class Witness:
    """Listens on one port at 127.0.0.1 and [::1]; records every connection.

    A check that must not dial sees ``connections == []``; it never gets a
    reply from here (the connection is closed at once).
    """

    def __init__(self) -> None:
        self.connections: list[str] = []
        self._stop = threading.Event()
        self.listeners: list[socket.socket] = []
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        self.port = int(v4.getsockname()[1])
        self.listeners.append(v4)
        with contextlib.suppress(OSError):  # a machine without IPv6 loopback
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::1", self.port))
            self.listeners.append(v6)
        self._threads = []
        for listener in self.listeners:
            listener.listen(16)
            listener.settimeout(0.05)
            thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                peer, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(str(address[0]))
            peer.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        for listener in self.listeners:
            listener.close()


@pytest.fixture
def witness() -> Iterator[Witness]:
    listener = Witness()
    yield listener
    listener.stop()
